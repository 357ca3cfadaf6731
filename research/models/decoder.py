"""arch='decoder': GPT (Radford et al. 2018, 2019; Brown et al. 2020) embeddings -> causal
Stack -> LM head; with a `prefix_len`, T5's prefix LM (Raffel et al. 2020, Sec 3.2.1).

GPT-1 is post-LN without a final LayerNorm; GPT-2/3 are pre-LN with a final LayerNorm and
scaled residual init; GPT-3 alternates dense and locally banded layers (`local_window`).
The same module serves training (full sequences) and incremental decoding with a KV cache:
`init_cache` allocates it, `prefill` runs the prompts into it, `decode_step` adds one token.
"""
from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from research.models import masks, prompting
from research.models.attention import init_stack_cache, slots_and_keys
from research.models.config import ModelConfig
from research.models.heads import LmHead
from research.models.layers import Embeddings
from research.models.transformer import Stack
from research.models.vocab_loss import VocabLoss


@flax.struct.dataclass
class DecoderOutput:
  logits: jax.Array | None  # [batch, length, vocab]
  hidden: jax.Array  # [batch, length, d_model]
  hidden_states: tuple | None = None
  attentions: tuple | None = None
  cache: dict | None = None
  vocab_loss: VocabLoss | None = None  # with `vocab_targets`, in place of the logits


def causal_masks(cfg: ModelConfig, query_slots, key_slots, key_valid, prefix_len=None):
  """(dense, local) masks of a causal stack: GPT-3's odd layers get the banded one."""
  mask = lambda window: masks.attention_mask(query_slots, key_slots, key_valid, kind='causal',
                                             prefix_len=prefix_len, window=window)
  return mask(0), (mask(cfg.local_window) if cfg.local_window else None)


class Decoder(nn.Module):
  cfg: ModelConfig

  def setup(self):
    self.embeddings = Embeddings(self.cfg)
    self.stack = Stack(self.cfg, self.cfg.num_layers)
    self.lm_head = LmHead(self.cfg)

  def __call__(self, input_ids, attention_mask=None, positions=None, *, prefix_len=None,
               deterministic: bool = True, cache: dict | None = None,
               cache_index: jax.Array | int = 0, return_intermediates: bool = False,
               logits: bool = True, logit_positions=None, vocab_targets=None) -> DecoderOutput:
    """input_ids: [batch, length]. attention_mask: [batch, length], 0 marks (left) padding.
    positions: [batch, length] position ids (default: slot index); with left-padded prompts
    pass cumsum(attention_mask) - 1 so each row's first real token sits at position 0.
    prefix_len [batch]: slots before it are read bidirectionally (prefix LM); T5's relative
    position buckets are then bidirectional for every query, as Mesh TensorFlow's are in any
    model that is not fully autoregressive (`bidirectional = not fully_autoregressive`):
    a prefix token must tell the keys to its right apart.
    With `cache` (from `init_cache`), the tokens occupy slots cache_index .. cache_index+length
    and attend to every earlier valid slot; the updated cache is returned. A cache filled by a
    bidirectional `prefill` carries its `prefix_len`, so decoding steps keep the buckets.
    logit_positions [batch, P]: only these positions go through the LM head (logits
    [batch, P, vocab]), as the encoder's `mlm_positions`: a loss on a few target positions
    then skips the full-vocabulary projection of the rest.
    vocab_targets (targets, weights) [batch, P]: score those targets of the projected positions
    (the LM head's `loss`: weighted cross-entropy without materialising the logits) and return
    it as `vocab_loss` instead of the logits."""
    cfg = self.cfg
    batch, length = input_ids.shape
    if attention_mask is None:
      attention_mask = jnp.ones((batch, length), bool)
    if cache is None:
      cfg.check_length(length)
    elif prefix_len is None:
      prefix_len = cache.get('prefix_len')
    query_slots, key_slots, key_valid = slots_and_keys(attention_mask, cache, cache_index)
    if positions is None:
      positions = jnp.broadcast_to(query_slots, (batch, length))
    x = self.embeddings(input_ids, positions, deterministic=deterministic)
    out = self.stack(x, causal_masks(cfg, query_slots, key_slots, key_valid, prefix_len),
                     causal=prefix_len is None, positions=(query_slots, key_slots),
                     deterministic=deterministic,
                     cache=None if cache is None else cache['layers'], cache_index=cache_index,
                     return_intermediates=return_intermediates)
    new_cache = None if cache is None else {'layers': out.cache, 'key_valid': key_valid}
    if new_cache is not None and prefix_len is not None:
      new_cache['prefix_len'] = prefix_len
    projected = out.hidden
    if logit_positions is not None:
      projected = jnp.take_along_axis(out.hidden, logit_positions[..., None], axis=1)  # [b, P, d]
    vocab, scored = self.lm_head.outputs(projected, self.embeddings, logits=logits,
                                         vocab_targets=vocab_targets)
    return DecoderOutput(logits=vocab, hidden=out.hidden, hidden_states=out.hidden_states,
                         attentions=out.attentions, cache=new_cache, vocab_loss=scored)

  def init_cache(self, batch: int, length: int) -> dict:
    """A KV cache of `length` slots: per-layer keys/values and which slots hold real tokens."""
    self.cfg.check_length(length)
    return init_stack_cache(self.cfg, batch, length, self.cfg.num_layers)

  def prefill(self, ids, mask, cache_len: int, bidirectional_prompt: bool = False):
    """Runs left-padded prompts ids, mask [batch, prompt] into a fresh cache of cache_len slots.

    Returns (logits of the last slot [batch, vocab] float32, cache, lengths [batch]): a row's
    next token takes position `lengths` (its own count, not the slot) and slot `prompt`. Only
    the last slot is projected onto the vocabulary. `bidirectional_prompt`: the prompt reads
    itself as a prefix LM's prefix does.
    """
    batch, prompt_len = ids.shape
    positions = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)  # [batch, prompt]: first real token at 0
    prefix_len = jnp.full((batch,), prompt_len) if bidirectional_prompt else None
    out = self(ids, mask, positions, prefix_len=prefix_len,
               cache=self.init_cache(batch, cache_len), cache_index=0, logits=False)
    logits = self.lm_head(out.hidden[:, -1], self.embeddings)  # [batch, vocab]
    return logits.astype(jnp.float32), out.cache, mask.sum(-1)

  def decode_step(self, tokens, positions, cache, slot):
    """One new token per row at cache slot `slot`: tokens, positions [batch] -> logits
    [batch, vocab] float32 and the updated cache."""
    out = self(tokens[:, None], None, positions[:, None], cache=cache, cache_index=slot)
    return out.logits[:, 0].astype(jnp.float32), out.cache

  # --- how a generation starts (models/prompting.py) ---
  @nn.nowrap
  def prefill_inputs(self, prompts, max_new_tokens: int, pad_id: int, start_id=None):
    """Prompts are continued: left-padded, so each row's last token takes the same slot."""
    del start_id  # the prompt's own last token starts the output
    return prompting.left_padded_inputs(prompts, max_new_tokens, self.cfg.max_len, pad_id)

  @nn.nowrap
  def text_prompt(self, tokenizer, text: str) -> prompting.TextPrompt:
    """The text after an end-of-text token, as every training document starts
    (objectives/clm.py); the output continues it."""
    ids = [tokenizer.eos_id, *tokenizer.encode(text)]
    return prompting.TextPrompt(ids, None, tokenizer.eos_id, ids)
