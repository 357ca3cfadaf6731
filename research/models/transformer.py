"""The one transformer block, and the stack of them, shared by encoders and decoders.

A `Block` does not know whether it is in BERT or GPT: that is decided by the mask it is given
and two switches (pre/post LayerNorm). `Stack` runs the blocks, threads the optional KV cache,
and collects per-layer hidden states and attention weights for probing.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax

from research.models.attention import MultiHeadAttention, residual_init_std
from research.models.config import ModelConfig
from research.models.layers import Mlp, layer_norm


@flax.struct.dataclass
class StackOutput:
  hidden: jax.Array  # [batch, length, d_model], after the final LayerNorm if any
  # When requested: the input of every layer and the last layer's output (num_layers + 1
  # tensors, HF's `hidden_states` convention), and each layer's attention weights
  # [batch, heads, q_len, k_len].
  hidden_states: tuple[jax.Array, ...] | None = None
  attentions: tuple[jax.Array, ...] | None = None
  cache: Any = None  # list of per-layer {'k', 'v'} when decoding with a cache


class Block(nn.Module):
  """Self-attention + MLP with residual connections.

  post-LN (BERT, GPT-1; Vaswani et al. Sec 5.4): x = LN(x + Drop(Attn(x))); x = LN(x + Drop(MLP(x)))
  pre-LN (GPT-2 Sec 2.3):                        x = x + Drop(Attn(LN(x))); x = x + Drop(MLP(LN(x)))
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, mask, deterministic: bool, cache=None, cache_index=None):
    cfg = self.cfg
    std = residual_init_std(cfg)
    drop = lambda y: nn.Dropout(cfg.dropout)(y, deterministic=deterministic)
    attention = MultiHeadAttention(cfg, std, name='attention')
    mlp = Mlp(cfg, std, name='mlp')
    ln_attention, ln_mlp = layer_norm(cfg, 'ln_attention'), layer_norm(cfg, 'ln_mlp')

    if cfg.pre_ln:
      a, weights, cache = attention(ln_attention(x), mask, deterministic=deterministic,
                                    cache=cache, cache_index=cache_index)
      x = x + drop(a)
      x = x + drop(mlp(ln_mlp(x), deterministic=deterministic))
    else:
      a, weights, cache = attention(x, mask, deterministic=deterministic,
                                    cache=cache, cache_index=cache_index)
      x = ln_attention(x + drop(a))
      x = ln_mlp(x + drop(mlp(x, deterministic=deterministic)))
    return x, weights, cache


class Stack(nn.Module):
  """`num_layers` Blocks (+ the final LayerNorm of pre-LN models).

  `masks` is (dense_mask, local_mask): layers for which `cfg.is_local_layer` holds get the
  locally banded one (GPT-3's alternating pattern); local_mask may be None otherwise.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, masks, *, deterministic: bool, cache=None, cache_index=None,
               return_intermediates: bool = False) -> StackOutput:
    cfg = self.cfg
    # Arguments are passed positionally so `deterministic` can be static under remat
    # (argnum 3 counts `self`).
    block_cls = nn.remat(Block, static_argnums=(3,)) if cfg.remat else Block
    dense_mask, local_mask = masks
    hidden_states, attentions, new_cache = [], [], []
    for i in range(cfg.num_layers):
      if return_intermediates:
        hidden_states.append(x)
      mask = local_mask if cfg.is_local_layer(i) else dense_mask
      layer_cache = None if cache is None else cache[i]
      x, weights, layer_cache = block_cls(cfg, name=f'layer_{i}')(
          x, mask, deterministic, layer_cache, cache_index)
      attentions.append(weights)
      new_cache.append(layer_cache)
    if cfg.final_ln:
      x = layer_norm(cfg, 'final_ln')(x)
    if not return_intermediates:
      return StackOutput(hidden=x, cache=None if cache is None else new_cache)
    hidden_states.append(x)
    return StackOutput(hidden=x, hidden_states=tuple(hidden_states), attentions=tuple(attentions),
                       cache=None if cache is None else new_cache)
