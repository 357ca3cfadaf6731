"""GPT (Radford et al. 2018, 2019; Brown et al. 2020): embeddings -> causal Stack -> tied LM head.

GPT-1 is post-LN without a final LayerNorm; GPT-2/3 are pre-LN with a final LayerNorm and
scaled residual init; GPT-3 alternates dense and locally banded layers (`local_window`).
The same module serves training (full sequences) and incremental decoding with a KV cache:
`init_cache` allocates it, and each call writes its keys/values at `cache_index`.
"""
from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from research.models.attention import init_kv_cache, make_mask
from research.models.config import ModelConfig
from research.models.layers import Embeddings
from research.models.transformer import Stack


@flax.struct.dataclass
class DecoderOutput:
  logits: jax.Array  # [batch, length, vocab]
  hidden: jax.Array  # [batch, length, d_model]
  hidden_states: tuple | None = None
  attentions: tuple | None = None
  cache: dict | None = None


def init_cache(cfg: ModelConfig, batch: int, length: int) -> dict:
  """A KV cache of `length` slots: per-layer keys/values and which slots hold real tokens."""
  cfg.check_length(length)
  return {'layers': [init_kv_cache(batch, length, cfg) for _ in range(cfg.num_layers)],
          'key_valid': jnp.zeros((batch, length), bool)}


class GPT(nn.Module):
  cfg: ModelConfig

  def setup(self):
    self.embeddings = Embeddings(self.cfg)
    self.stack = Stack(self.cfg)

  def __call__(self, input_ids, attention_mask=None, positions=None, *,
               deterministic: bool = True, cache: dict | None = None,
               cache_index: jax.Array | int = 0,
               return_intermediates: bool = False) -> DecoderOutput:
    """input_ids: [batch, length]. attention_mask: [batch, length], 0 marks (left) padding.
    positions: [batch, length] position ids (default: slot index); with left-padded prompts
    pass cumsum(attention_mask) - 1 so each row's first real token sits at position 0.
    With `cache` (from `init_cache`), the tokens occupy slots cache_index .. cache_index+length
    and attend to every earlier valid slot; the updated cache is returned."""
    cfg = self.cfg
    batch, length = input_ids.shape
    if attention_mask is None:
      attention_mask = jnp.ones((batch, length), bool)
    query_slots = cache_index + jnp.arange(length)
    if positions is None:
      positions = jnp.broadcast_to(query_slots, (batch, length))

    if cache is None:
      cfg.check_length(length)
      key_slots, key_valid, layer_caches = query_slots, attention_mask, None
    else:
      key_valid = jax.lax.dynamic_update_slice(cache['key_valid'], attention_mask.astype(bool),
                                               (0, cache_index))
      key_slots = jnp.arange(key_valid.shape[1])
      layer_caches = cache['layers']
    dense = make_mask(query_slots, key_slots, key_valid, causal=True)  # [batch, 1, q_len, k_len]
    local = (make_mask(query_slots, key_slots, key_valid, causal=True, window=cfg.local_window)
             if cfg.local_window else None)

    x = self.embeddings(input_ids, positions, deterministic=deterministic)
    out = self.stack(x, (dense, local), deterministic=deterministic, cache=layer_caches,
                     cache_index=cache_index, return_intermediates=return_intermediates)
    logits = self.embeddings.attend(out.hidden)  # tied LM head (GPT-1 Eq. 2)
    new_cache = None if cache is None else {'layers': out.cache, 'key_valid': key_valid}
    return DecoderOutput(logits=logits, hidden=out.hidden, hidden_states=out.hidden_states,
                         attentions=out.attentions, cache=new_cache)
