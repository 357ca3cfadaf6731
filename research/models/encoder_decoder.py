"""arch='encoder_decoder': T5 (Raffel et al. 2020) and BART (Lewis et al. 2020).

A bidirectional Stack reads the source; a causal Stack of `Block(cross=True)` writes the
target, each layer cross-attending to the encoder's output (Vaswani et al. 2017, Sec 3.1).
Both stacks share one token table (T5 Sec 2.1; BART follows the standard Transformer) and
keep their own positions: T5's relative bias (one per stack), BART's learned tables.

`encode` / `decode` split the model as flax `examples/wmt` does, so training runs both and
generation runs the encoder once: `prefill` encodes the source, caches every decoder layer's
cross-attention keys and values, and feeds the decoder start token (T5: pad, BART: eos);
`decode_step` then adds one target token against the cache.
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
from research.models.decoder import DecoderOutput
from research.models.heads import LmHead
from research.models.layers import Embeddings, token_embedding
from research.models.transformer import Stack, StackOutput
from research.models.vocab_loss import VocabLoss


@flax.struct.dataclass
class Seq2SeqOutput:
  logits: jax.Array | None  # [batch, target_len, vocab]
  hidden: jax.Array  # decoder output [batch, target_len, d_model]
  encoder: StackOutput  # encoder output, hidden [batch, source_len, d_model]
  decoder: DecoderOutput
  vocab_loss: VocabLoss | None = None  # with `vocab_targets`, in place of the logits


class EncoderDecoder(nn.Module):
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.shared = token_embedding(cfg)
    self.encoder_embeddings = Embeddings(cfg, shared=self.shared)
    self.decoder_embeddings = Embeddings(cfg, shared=self.shared)
    self.encoder = Stack(cfg, cfg.num_layers)
    if not cfg.share_stacks:
      self.decoder = Stack(cfg, cfg.decoder_layers)
    self.lm_head = LmHead(cfg)

  @property
  def decoder_stack(self) -> Stack:
    """The decoder's Stack: its own, or the encoder's (T5 Sec 3.2.2, "shared" parameters:
    the decoder blocks reuse the encoder blocks' weights and add their cross-attention)."""
    return self.encoder if self.cfg.share_stacks else self.decoder

  def encode(self, input_ids, attention_mask=None, *, deterministic: bool = True,
             return_intermediates: bool = False) -> StackOutput:
    """Source ids, attention_mask (1 = token) [batch, source_len] -> encoder StackOutput."""
    batch, length = input_ids.shape
    self.cfg.check_length(length, 'source')
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    positions = jnp.arange(length)[None]  # [1, length]
    mask = masks.attention_mask(positions, positions, attention_mask)  # [batch, 1, S, S]
    x = self.encoder_embeddings(input_ids, jnp.broadcast_to(positions, (batch, length)),
                                deterministic=deterministic)
    return self.encoder(x, (mask, None), positions=(positions, positions),
                        deterministic=deterministic, return_intermediates=return_intermediates)

  def decode(self, decoder_input_ids, memory, memory_valid, decoder_mask=None, *,
             deterministic: bool = True, cache: dict | None = None,
             cache_index: jax.Array | int = 0, return_intermediates: bool = False,
             logits: bool = True, vocab_targets=None) -> DecoderOutput:
    """decoder_input_ids, decoder_mask [batch, target_len]: the target shifted right by the
    start token; memory [batch, source_len, d_model] the encoder output (None when the
    cache holds its keys and values); memory_valid [batch, source_len] its padding mask.
    With `cache` the tokens occupy slots cache_index .. cache_index + target_len.
    vocab_targets (targets, weights) [batch, target_len]: return their weighted cross-entropy
    as `vocab_loss` instead of the logits (Decoder's argument of the same name)."""
    cfg = self.cfg
    batch, length = decoder_input_ids.shape
    if decoder_mask is None:
      decoder_mask = jnp.ones((batch, length), bool)
    if cache is None:
      cfg.check_length(length, 'target')
    elif memory_valid is None:
      memory_valid = cache['memory_valid']
    query_slots, key_slots, key_valid = slots_and_keys(decoder_mask, cache, cache_index)
    self_mask = masks.attention_mask(query_slots, key_slots, key_valid, kind='causal')
    source_order = jnp.arange(memory_valid.shape[1])[None]
    cross_mask = masks.attention_mask(query_slots, source_order, memory_valid)  # [b, 1, T, S]
    x = self.decoder_embeddings(decoder_input_ids, jnp.broadcast_to(query_slots, (batch, length)),
                                deterministic=deterministic)
    out = self.decoder_stack(x, (self_mask, None), causal=True,
                             positions=(query_slots, key_slots), memory=memory,
                             memory_mask=cross_mask, deterministic=deterministic,
                             cache=None if cache is None else cache['layers'],
                             cache_index=cache_index,
                             return_intermediates=return_intermediates)
    new_cache = None if cache is None else {'layers': out.cache, 'key_valid': key_valid,
                                            'memory_valid': memory_valid}
    vocab, scored = self.lm_head.outputs(out.hidden, self.decoder_embeddings, logits=logits,
                                         vocab_targets=vocab_targets)
    return DecoderOutput(logits=vocab, hidden=out.hidden, hidden_states=out.hidden_states,
                         attentions=out.attentions, cache=new_cache, vocab_loss=scored)

  def __call__(self, input_ids, decoder_input_ids, attention_mask=None, decoder_mask=None, *,
               deterministic: bool = True, return_intermediates: bool = False,
               logits: bool = True, vocab_targets=None) -> Seq2SeqOutput:
    """Teacher-forced pass: source [batch, S] -> logits [batch, T, vocab] of the next target
    token at each decoder input position (or, given `vocab_targets`, their scores)."""
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    encoded = self.encode(input_ids, attention_mask, deterministic=deterministic,
                          return_intermediates=return_intermediates)
    decoded = self.decode(decoder_input_ids, encoded.hidden, attention_mask, decoder_mask,
                          deterministic=deterministic, return_intermediates=return_intermediates,
                          logits=logits, vocab_targets=vocab_targets)
    return Seq2SeqOutput(logits=decoded.logits, hidden=decoded.hidden, encoder=encoded,
                         decoder=decoded, vocab_loss=decoded.vocab_loss)

  def init_cache(self, batch: int, length: int) -> dict:
    """Decoder self-attention caches of `length` slots (the cross-attention keys and values
    are added by `prefill`) and which slots hold real tokens."""
    self.cfg.check_length(length, 'target')
    return init_stack_cache(self.cfg, batch, length, self.cfg.decoder_layers)

  def prefill(self, source_ids, source_mask, start_ids, cache_len: int):
    """Encodes source_ids, source_mask [batch, S] once and feeds start_ids [batch].

    Returns (logits of the first target token [batch, vocab] float32, cache, lengths [batch]
    = 1: the start token took position 0 and slot 0)."""
    batch = source_ids.shape[0]
    memory = self.encode(source_ids, source_mask).hidden
    out = self.decode(start_ids[:, None], memory, source_mask.astype(bool),
                      cache=self.init_cache(batch, cache_len), cache_index=0)
    return out.logits[:, 0].astype(jnp.float32), out.cache, jnp.ones((batch,), jnp.int32)

  def decode_step(self, tokens, positions, cache, slot):
    """One new target token per row at slot `slot` (positions = slots here: the decoder's
    inputs are never padded on the left) -> logits [batch, vocab] float32, cache."""
    del positions
    out = self.decode(tokens[:, None], None, None, cache=cache, cache_index=slot)
    return out.logits[:, 0].astype(jnp.float32), out.cache

  # --- how a generation starts (models/prompting.py) ---
  @nn.nowrap
  def prefill_inputs(self, prompts, max_new_tokens: int, pad_id: int, start_id=None):
    """Prompts are sources, right-padded to a bucket; the decoder starts at start_id."""
    if start_id is None:
      raise ValueError('an encoder-decoder needs start_id, its decoder start token')
    longest = max(map(len, prompts))
    self.cfg.check_length(longest, 'source')
    source_len, _ = prompting.plan_lengths(longest, 1, self.cfg.max_len)
    _, cache_len = prompting.plan_lengths(1, max_new_tokens, self.cfg.max_len)
    ids, mask = prompting.right_pad(prompts, source_len, pad_id)
    return ({'source_ids': ids, 'source_mask': mask,
             'start_ids': np.full(len(prompts), start_id, np.int32)}, 1, cache_len)

  @nn.nowrap
  def text_prompt(self, tokenizer, text: str) -> prompting.TextPrompt:
    """The text framed as the family's pretraining framed a source (`frame`); the output is a
    target of its own."""
    ids = frame(tokenizer, tokenizer.encode(text), self.cfg.decoder_start)
    return prompting.TextPrompt(ids, start_id(tokenizer, self.cfg.decoder_start),
                                tokenizer.eos_id, [])


def start_id(tokenizer, decoder_start: str) -> int:
  """The decoder's first input: pad for T5, eos for BART (`ModelConfig.decoder_start`)."""
  return {'pad': tokenizer.pad_id, 'eos': tokenizer.eos_id}[decoder_start]


def frame(tokenizer, ids, decoder_start: str) -> list[int]:
  """A source or target text as the family's pretraining framed it: T5 `text </s>`, BART
  `<s> text </s>` (fairseq's; BART is the family whose decoder starts at eos)."""
  if decoder_start == 'eos':
    return [tokenizer.bos_id, *ids, tokenizer.eos_id]
  return [*ids, tokenizer.eos_id]
