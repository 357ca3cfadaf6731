"""arch='encoder': BERT (Devlin et al. 2019) embeddings(+segments) -> Stack -> pooler, and the
pretraining model with its masked-LM and next-sentence heads.

By default every token attends to every non-padding token (`mask_kind='full'`). The mask is
data: with `mask_kind='causal'`, per-row `order` and `prefix_len` the same stack reads
left-to-right, right-to-left or source-bidirectional/target-causal, which is how UniLM trains
one encoder with several objectives in one batch (Dong et al. 2019, Sec 2.2), and with
`cfg.two_stream` it also runs XLNet's query stream over a sampled factorization order
(Yang et al. 2019, Sec 2.3). UniLM-style generation (Dong et al. 2019, Sec 3.2: a [MASK]
appended after the text so far is predicted) runs over a KV cache: `prefill` / `decode_step`.
"""
from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from research.models import masks, prompting
from research.models.attention import init_stack_cache, slots_and_keys
from research.models.config import ModelConfig
from research.models.heads import ClassifierHead, MlmHead, Pooler
from research.models.layers import Embeddings, dense_init
from research.models.transformer import Stack


@flax.struct.dataclass
class EncoderOutput:
  hidden: jax.Array  # [batch, length, d_model]
  pooled: jax.Array  # [batch, d_model]
  hidden_states: tuple | None = None
  attentions: tuple | None = None
  query: jax.Array | None = None  # XLNet's query stream [batch, length, d_model]
  cache: dict | None = None


def seq2seq_segments(cfg: ModelConfig) -> tuple[int, int]:
  """Segment ids of source and target under the seq2seq mask: UniLM's own pair (its segment
  embeddings name the LM objective; objectives/unilm.py) when the model has them, else A/B."""
  return (4, 5) if cfg.type_vocab_size >= 6 else (0, 1 if cfg.type_vocab_size > 1 else 0)


class Encoder(nn.Module):
  """The bare encoder: embeddings, a Stack and BERT's [CLS] pooler (+ XLNet's query vector)."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embeddings = Embeddings(cfg)
    self.stack = Stack(cfg, cfg.num_layers)
    self.pooler = Pooler(cfg)
    if cfg.two_stream:  # XLNet Sec 2.3: g_i^(0) = w, a trainable vector (embedded with position i)
      self.query_init = self.param('query_init', dense_init(cfg.init_std, ('embed',)),
                                   (cfg.d_model,))

  def __call__(self, input_ids, segment_ids=None, attention_mask=None, *,
               mask_kind: str = 'full', order=None, prefix_len=None, positions=None,
               query_stream: bool = False, deterministic: bool = True, cache: dict | None = None,
               cache_index: jax.Array | int = 0,
               return_intermediates: bool = False) -> EncoderOutput:
    """input_ids, segment_ids, attention_mask (1 = token, 0 = padding): [batch, length];
    order [batch, length] (default: slot index), prefix_len [batch]: masks.attention_mask;
    positions [batch, length]: position ids (default: slot index). query_stream: also run
    XLNet's query stream (needs cfg.two_stream and mask_kind='causal'; it sees strictly
    earlier tokens in `order`, never its own). With `cache` the tokens occupy slots
    cache_index .. cache_index + length, as a decoder's do."""
    cfg = self.cfg
    batch, length = input_ids.shape
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if cache is None:
      cfg.check_length(length)
    slots, key_slots, key_valid = slots_and_keys(attention_mask, cache, cache_index)
    q_order = slots if order is None else order
    k_order = key_slots if order is None else order
    mask = masks.attention_mask(q_order, k_order, key_valid, kind=mask_kind,
                                prefix_len=prefix_len)  # [batch, 1, q, k]
    if positions is None:
      positions = jnp.broadcast_to(slots, (batch, length))
    x = self.embeddings(input_ids, positions, segment_ids, deterministic=deterministic)
    query = query_mask = None
    if query_stream:
      if not cfg.two_stream or mask_kind != 'causal':
        raise ValueError('the query stream needs --config.model.two_stream=True and a causal '
                         'factorization order')
      w = jnp.broadcast_to(self.query_init.astype(x.dtype), x.shape)  # [batch, length, d_model]
      query = self.embeddings(input_ids, positions, segment_ids, deterministic=deterministic,
                              token_vectors=w)
      query_mask = masks.attention_mask(q_order, k_order, key_valid, kind='strictly_causal')
    out = self.stack(x, (mask, None), positions=(slots, key_slots), query=query,
                     query_mask=query_mask, deterministic=deterministic,
                     cache=None if cache is None else cache['layers'], cache_index=cache_index,
                     return_intermediates=return_intermediates)
    new_cache = None if cache is None else {'layers': out.cache, 'key_valid': key_valid}
    return EncoderOutput(hidden=out.hidden, pooled=self.pooler(out.hidden),
                         hidden_states=out.hidden_states, attentions=out.attentions,
                         query=out.query, cache=new_cache)


class EncoderLM(nn.Module):
  """Encoder + masked-LM head (tied to the token embeddings) + next-sentence head (BERT
  Sec 3.1): the pretraining model of arch='encoder' (BERT, UniLM, XLNet)."""
  cfg: ModelConfig

  def setup(self):
    self.encoder = Encoder(self.cfg)
    self.mlm_head = MlmHead(self.cfg)
    self.nsp_head = ClassifierHead(self.cfg, 2)

  def __call__(self, input_ids, segment_ids=None, attention_mask=None, *,
               mlm_positions=None, deterministic: bool = True,
               return_intermediates: bool = False, **mask) -> dict:
    """Returns mlm_logits [batch, P, vocab] at `mlm_positions` [batch, P] (all positions if
    None: as google-research/bert does, gathering the predicted positions first avoids a
    vocab-sized projection of the ~85% of tokens that carry no loss) and nsp_logits [batch, 2].
    `mask`: mask_kind / order / prefix_len / query_stream of Encoder; with query_stream the
    MLM head reads the query stream (XLNet predicts a token from g, which never saw it)."""
    out = self.encoder(input_ids, segment_ids, attention_mask, deterministic=deterministic,
                       return_intermediates=return_intermediates, **mask)
    hidden = out.hidden if out.query is None else out.query
    if mlm_positions is not None:
      hidden = jnp.take_along_axis(hidden, mlm_positions[..., None], axis=1)  # [batch, P, d_model]
    return {'mlm_logits': self.mlm_head(hidden, self.encoder.embeddings.attend),
            'nsp_logits': self.nsp_head(out.pooled), 'encoder': out}

  # --- generation with the seq2seq mask (UniLM Sec 3.2) ---
  def init_cache(self, batch: int, length: int) -> dict:
    """`length` slots (generate.py checks prompt + new tokens against the positions)."""
    return init_stack_cache(self.cfg, batch, length, self.cfg.num_layers)

  def _mask_step(self, ids, mask, positions, segments, cache, slot, prefix_len=None):
    """Runs ids (the last one a [MASK]) into the cache; logits of that [MASK] [batch, vocab]."""
    out = self.encoder(ids, segments, mask, mask_kind='causal', prefix_len=prefix_len,
                       positions=positions, cache=cache, cache_index=slot)
    logits = self.mlm_head(out.hidden[:, -1], self.encoder.embeddings.attend)
    return logits.astype(jnp.float32), out.cache

  def prefill(self, ids, mask, start_ids, cache_len: int):
    """Left-padded sources ids, mask [batch, S] read bidirectionally, then a [MASK]
    (start_ids [batch]) at slot S whose prediction is the first target token. One spare cache
    slot holds the trailing [MASK] of the last step. Returns (logits, cache, lengths)."""
    batch, source_len = ids.shape
    source_segment, target_segment = seq2seq_segments(self.cfg)
    lengths = mask.sum(-1)
    positions = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)  # [batch, S]: first real token at 0
    ids = jnp.concatenate([ids, start_ids[:, None]], 1)  # [batch, S + 1]
    mask = jnp.concatenate([mask, jnp.ones((batch, 1), mask.dtype)], 1)
    positions = jnp.concatenate([positions, lengths[:, None]], 1)
    segments = jnp.where(jnp.arange(source_len + 1) < source_len, source_segment,
                         target_segment) * jnp.ones((batch, 1), jnp.int32)
    logits, cache = self._mask_step(ids, mask, positions, segments,
                                    self.init_cache(batch, cache_len + 1), 0,
                                    prefix_len=jnp.full((batch,), source_len))
    # The [MASK] keeps its stored key/value: the next step writes the real token over it.
    return logits, {**cache, 'mask_id': start_ids}, lengths

  def decode_step(self, tokens, positions, cache, slot):
    """tokens [batch] at slot `slot` and a new [MASK] at slot + 1; its logits, cache."""
    _, target_segment = seq2seq_segments(self.cfg)
    ids = jnp.stack([tokens, cache['mask_id']], 1)  # [batch, 2]
    positions = jnp.stack([positions, positions + 1], 1)
    segments = jnp.full(ids.shape, target_segment, jnp.int32)
    logits, new = self._mask_step(ids, jnp.ones_like(ids), positions, segments,
                                  {k: v for k, v in cache.items() if k != 'mask_id'}, slot)
    return logits, {**new, 'mask_id': cache['mask_id']}

  @nn.nowrap
  def prefill_inputs(self, prompts, max_new_tokens: int, pad_id: int, start_id=None):
    """Sources left-padded; start_id is the [MASK] each next token is predicted at."""
    if start_id is None:
      raise ValueError('an encoder generates by predicting a [MASK]: pass its id as start_id')
    inputs, prompt_len, cache_len = prompting.left_padded_inputs(prompts, max_new_tokens,
                                                                 self.cfg.max_len, pad_id)
    return {**inputs, 'start_ids': np.full(len(prompts), start_id, np.int32)}, prompt_len, \
        cache_len

  @nn.nowrap
  def text_prompt(self, tokenizer, text: str) -> prompting.TextPrompt:
    """`[CLS] text [SEP]` as UniLM's seq2seq source; the target ends at [SEP]."""
    missing = [n for n in ('cls', 'sep', 'mask') if getattr(tokenizer, f'{n}_id') is None]
    if missing:
      raise ValueError(f'an encoder writes text UniLM-style with [CLS]/[SEP]/[MASK]; this '
                       f'vocabulary lacks {"/".join(missing)}')
    ids = [tokenizer.cls_id, *tokenizer.encode(text), tokenizer.sep_id]
    return prompting.TextPrompt(ids, tokenizer.mask_id, tokenizer.sep_id, [])
