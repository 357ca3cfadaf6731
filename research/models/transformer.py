"""The one transformer Block, and the Stack of them, shared by every family.

A `Block` does not know whether it is in BERT, GPT, T5 or BART: that is decided by the mask
(and bias) it is given and a few switches (pre/post norm, norm kind, biases, MLP kind).
A Block given an encoder's output (`memory`) adds cross-attention over it between its
self-attention and its MLP (Vaswani et al. 2017, Sec 3.1 "Decoder"). `Stack` runs the blocks,
computes T5's relative position bias once for all of them, threads the optional KV cache and
collects per-layer hidden states and attention weights for probing.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax

from research.models.attention import MultiHeadAttention, residual_init_std
from research.models.config import ModelConfig
from research.models.layers import Mlp, RelativePositionBias, norm


@flax.struct.dataclass
class StackOutput:
  hidden: jax.Array  # [batch, length, d_model], after the final norm if any
  # When requested: the input of every layer and the last layer's output (num_layers + 1
  # tensors, HF's `hidden_states` convention), and each layer's self-attention weights
  # [batch, heads, q_len, k_len].
  hidden_states: tuple[jax.Array, ...] | None = None
  attentions: tuple[jax.Array, ...] | None = None
  cache: Any = None  # list of per-layer {'self': {'k', 'v'}[, 'cross': {'k', 'v'}]}
  query: jax.Array | None = None  # XLNet's query stream output [batch, q, d_model]


class Block(nn.Module):
  """Self-attention (+ cross-attention) + MLP with residual connections.

  post-LN (BERT, GPT-1, BART; Vaswani et al. Sec 5.4):  x = N(x + Drop(Sublayer(x)))
  pre-LN (GPT-2 Sec 2.3, T5 Sec 2.1):                  x = x + Drop(Sublayer(N(x)))
  for Sublayer in (self-attention, [cross-attention over `memory`], MLP).
  """
  cfg: ModelConfig
  num_layers: int = 1  # depth of the stack this block is in (GPT-2's residual init)

  @nn.compact
  def __call__(self, x, data: dict, deterministic: bool, cache=None, cache_index=None):
    """x [batch, length, d_model]; data: 'mask' [batch, 1, q, k], optional 'bias'
    [1|batch, heads, q, k], optional 'kv' [batch, k, d_model] the stream self-attention
    reads keys and values from (default x itself; XLNet's query stream reads the content
    stream), and for decoder blocks of an encoder-decoder 'memory' [batch, m, d_model] (None
    when decoding from the cache) with 'memory_mask' [batch, 1, q, m]."""
    cfg = self.cfg
    std = residual_init_std(cfg, self.num_layers)
    drop = lambda y: nn.Dropout(cfg.dropout)(y, deterministic=deterministic)

    def residual(x, name, sublayer):
      ln = norm(cfg, f'ln_{name}')
      if cfg.pre_ln:
        return x + drop(sublayer(ln(x), ln))
      return ln(x + drop(sublayer(x, ln)))

    new_cache = None if cache is None else {}
    weights = None

    def self_attention(h, ln):
      nonlocal weights
      # XLNet's query stream attends over the content stream `kv` (normalised as queries are).
      kv = data.get('kv')
      if kv is not None and cfg.pre_ln:
        kv = ln(kv)
      out, weights, layer_cache = MultiHeadAttention(cfg, std, name='attention')(
          h, kv, mask=data['mask'], bias=data.get('bias'), deterministic=deterministic,
          cache=None if cache is None else cache['self'], cache_index=cache_index)
      if cache is not None:
        new_cache['self'] = layer_cache
      return out

    def cross_attention(h, _):
      memory = data.get('memory')
      cached = None if cache is None or memory is not None else cache['cross']
      out, _, kv = MultiHeadAttention(cfg, std, name='cross_attention')(
          h, memory, mask=data['memory_mask'], deterministic=deterministic, cache=cached)
      if cache is not None:
        new_cache['cross'] = kv
      return out

    x = residual(x, 'attention', self_attention)
    if 'memory_mask' in data:  # a decoder block of an encoder-decoder
      x = residual(x, 'cross', cross_attention)
    x = residual(x, 'mlp', lambda h, _: Mlp(cfg, std, name='mlp')(h, deterministic=deterministic))
    return x, weights, new_cache


class Stack(nn.Module):
  """`num_layers` Blocks (+ the final norm of pre-LN models, + T5's relative position bias).

  `masks` is (dense_mask, local_mask): layers for which `cfg.is_local_layer` holds get the
  locally banded one (GPT-3's alternating pattern); local_mask may be None otherwise.
  With cfg.position == 'relative', `positions` = (query positions [batch|1, q], key positions
  [batch|1, k]) give the bias, bidirectional unless `causal`. Given `memory_mask`, every
  Block cross-attends to `memory` (an encoder-decoder's decoder; T5's shared-parameter
  variant runs one Stack as both, Raffel et al. 2020, Sec 3.2.2).
  """
  cfg: ModelConfig
  num_layers: int

  @nn.compact
  def __call__(self, x, masks, *, causal: bool = False, positions=None, memory=None,
               memory_mask=None, query=None, query_mask=None, deterministic: bool, cache=None,
               cache_index=None, return_intermediates: bool = False) -> StackOutput:
    """query [batch, q, d_model], query_mask [batch, 1, q, k]: XLNet's query stream (Yang et
    al. 2019, Sec 2.3, Eq. 4), run through every layer's same Block on `query` with keys and
    values from the content stream x of that layer's input; returned as `query`."""
    cfg = self.cfg
    bias = None
    if cfg.position == 'relative':
      bias = RelativePositionBias(cfg, bidirectional=not causal, name='relative_bias')(
          *positions)  # [1|batch, heads, q, k]
    # Arguments are passed positionally so `deterministic` can be static under remat
    # (argnum 3 counts `self`).
    block_cls = nn.remat(Block, static_argnums=(3,)) if cfg.remat else Block
    dense_mask, local_mask = masks
    hidden_states, attentions, new_cache = [], [], []
    for i in range(self.num_layers):
      if return_intermediates:
        hidden_states.append(x)
      data = {'mask': local_mask if cfg.is_local_layer(i) else dense_mask, 'bias': bias}
      if memory_mask is not None:
        data.update(memory=memory, memory_mask=memory_mask)
      layer_cache = None if cache is None else cache[i]
      block = block_cls(cfg, self.num_layers, name=f'layer_{i}')
      if query is not None:  # shares the block's weights; reads the layer's content input
        query, _, _ = block(query, {**data, 'mask': query_mask, 'kv': x}, deterministic)
      x, weights, layer_cache = block(x, data, deterministic, layer_cache, cache_index)
      attentions.append(weights)
      new_cache.append(layer_cache)
    if cfg.final_ln:
      final_ln = norm(cfg, 'final_ln')
      x = final_ln(x)
      query = None if query is None else final_ln(query)
    cache_out = None if cache is None else new_cache
    if not return_intermediates:
      return StackOutput(hidden=x, cache=cache_out, query=query)
    hidden_states.append(x)
    return StackOutput(hidden=x, hidden_states=tuple(hidden_states), attentions=tuple(attentions),
                       cache=cache_out, query=query)
