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
import jax.numpy as jnp

from research.models.attention import MultiHeadAttention, residual_init_scale
from research.models.config import ModelConfig
from research.models.layers import (RESIDUAL, Dropout, Mlp, RelativePositionBias, constrain,
                                    norm)


@flax.struct.dataclass
class StackOutput:
  hidden: jax.Array  # [batch, length, d_model], after the final norm if any
  # When requested: the input of every layer and the last layer's output (num_layers + 1
  # tensors, HF's `hidden_states` convention), and each layer's self-attention weights
  # [batch, heads, q_len, k_len].
  hidden_states: tuple[jax.Array, ...] | None = None
  attentions: tuple[jax.Array, ...] | None = None
  # list of per-layer {'self': {'k', 'v'}[, 'cross': {'k', 'v'}]}; scanned: one such dict
  # of arrays with a leading layers axis
  cache: Any = None
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
    scale = residual_init_scale(cfg, self.num_layers)
    drop = lambda y: Dropout(cfg.dropout)(y, deterministic=deterministic)

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
      out, weights, layer_cache = MultiHeadAttention(cfg, scale, name='attention')(
          h, kv, mask=data['mask'], bias=data.get('bias'), deterministic=deterministic,
          cache=None if cache is None else cache['self'], cache_index=cache_index)
      if cache is not None:
        new_cache['self'] = layer_cache
      return out

    def cross_attention(h, _):
      memory = data.get('memory')
      cached = None if cache is None or memory is not None else cache['cross']
      out, _, kv = MultiHeadAttention(cfg, scale, name='cross_attention')(
          h, memory, mask=data['memory_mask'], deterministic=deterministic, cache=cached)
      if cache is not None:
        new_cache['cross'] = kv
      return out

    x = constrain(residual(x, 'attention', self_attention), RESIDUAL)
    if 'memory_mask' in data:  # a decoder block of an encoder-decoder
      x = constrain(residual(x, 'cross', cross_attention), RESIDUAL)
    x = residual(x, 'mlp', lambda h, _: Mlp(cfg, scale, name='mlp')(h, deterministic=deterministic))
    return constrain(x, RESIDUAL), weights, new_cache


# jax.checkpoint policies of ModelConfig.remat_policy: what the backward pass may keep of a
# block's forward pass instead of recomputing it ('full' keeps nothing but the block's input).
REMAT_POLICIES = {
    'full': None,
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    'dots_with_no_batch_dims_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Stack(nn.Module):
  """`num_layers` Blocks (+ the final norm of pre-LN models, + T5's relative position bias).

  `masks` is (dense_mask, local_mask): layers for which `cfg.is_local_layer` holds get the
  locally banded one (GPT-3's alternating pattern); local_mask may be None otherwise.
  With cfg.position == 'relative', `positions` = (query positions [batch|1, q], key positions
  [batch|1, k]) give the bias, bidirectional unless `causal`. Given `memory_mask`, every
  Block cross-attends to `memory` (an encoder-decoder's decoder; T5's shared-parameter
  variant runs one Stack as both, Raffel et al. 2020, Sec 3.2.2).

  The blocks run as a Python loop (parameters `layer_{i}/...`) or, with cfg.scan_layers, as
  one `nn.scan` over a single Block whose parameters carry a leading layers axis
  (`layers/...`, logical axis 'layers'); both compute the same function of the same weights
  (models/scan_layout.py converts between the two layouts). What differs per layer enters the
  scan as data: the layer index (GPT-3's odd layers select the banded mask) and that layer's
  slice of the cache. T5's bias, the masks and the encoder memory are computed once and
  broadcast to every iteration.
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
    dense_mask, local_mask = masks
    data = {'mask': dense_mask, 'bias': bias}
    if memory_mask is not None:
      data.update(memory=memory, memory_mask=memory_mask)
    run = _scanned_layers if cfg.scan_layers else _looped_layers
    (x, query), hidden_states, attentions, new_cache = run(
        self, (x, query), data, local_mask, query_mask, deterministic, cache, cache_index,
        return_intermediates)
    if cfg.final_ln:
      final_ln = norm(cfg, 'final_ln')
      x = final_ln(x)
      query = None if query is None else final_ln(query)
    if cfg.final_dropout:  # T5 (HF T5Stack): the stack's output is dropped after its norm
      x = Dropout(cfg.dropout)(x, deterministic=deterministic)
    if not return_intermediates:
      return StackOutput(hidden=x, cache=new_cache, query=query)
    return StackOutput(hidden=x, hidden_states=(*hidden_states, x), attentions=attentions,
                       cache=new_cache, query=query)


def _layer(block, streams, data, query_mask, deterministic, cache, cache_index):
  """One Block on the content stream and, for XLNet, on the query stream (same weights; the
  query stream reads keys and values from the layer's content input)."""
  x, query = streams
  if query is not None:
    query, _, _ = block(query, {**data, 'mask': query_mask, 'kv': x}, deterministic)
  x, weights, cache = block(x, data, deterministic, cache, cache_index)
  return (x, query), weights, cache


def _looped_layers(stack: Stack, streams, data, local_mask, query_mask, deterministic, cache,
                   cache_index, collect):
  """The blocks as a Python loop (one `layer_{i}` per layer, unrolled in the program)."""
  cfg = stack.cfg
  block_cls = Block
  if cfg.remat_mode != 'none':
    # Arguments are passed positionally so `deterministic` can be static under remat
    # (argnum 3 counts `self`).
    block_cls = nn.remat(Block, static_argnums=(3,), policy=REMAT_POLICIES[cfg.remat_mode])
  hidden_states, attentions, new_cache = [], [], []
  for i in range(stack.num_layers):
    hidden_states.append(streams[0])
    layer_data = {**data, 'mask': local_mask if cfg.is_local_layer(i) else data['mask']}
    block = block_cls(cfg, stack.num_layers, name=f'layer_{i}')
    streams, weights, layer_cache = _layer(block, streams, layer_data, query_mask, deterministic,
                                           None if cache is None else cache[i], cache_index)
    attentions.append(weights)
    new_cache.append(layer_cache)
  return (streams, tuple(hidden_states) if collect else None,
          tuple(attentions) if collect else None, None if cache is None else new_cache)


def _scanned_layers(stack: Stack, streams, data, local_mask, query_mask, deterministic, cache,
                    cache_index, collect):
  """The blocks as one `nn.scan` over a Block with stacked parameters: one layer's program,
  run num_layers times. Per-layer hidden states and attention weights come out stacked along
  the layers axis and are split into the loop's tuples; the cache stays stacked."""
  cfg = stack.cfg

  def body(block: Block, streams, layer, layer_cache, data, local_mask, query_mask,
           cache_index):
    if local_mask is not None:  # GPT-3: odd layers read the banded mask (cfg.is_local_layer)
      data = {**data, 'mask': jnp.where(layer % 2 == 1, local_mask, data['mask'])}
    out, weights, layer_cache = _layer(block, streams, data, query_mask, deterministic,
                                       layer_cache, cache_index)
    # Only what is asked for leaves the loop: stacked weights are [layers, b, h, q, k].
    return out, (layer_cache, weights if collect else None, streams[0] if collect else None)

  if cfg.remat_mode != 'none':
    # prevent_cse=False: the scan already keeps XLA from merging the recomputation away
    # (flax's advice for remat inside scan).
    body = nn.remat(body, prevent_cse=False, policy=REMAT_POLICIES[cfg.remat_mode])
  scan = nn.scan(body, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                 in_axes=(0, 0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                 length=stack.num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
  block = Block(cfg, stack.num_layers, name='layers')
  streams, (new_cache, weights, inputs) = scan(
      block, streams, jnp.arange(stack.num_layers), cache, data, local_mask, query_mask,
      cache_index)
  split = lambda stacked: tuple(stacked[i] for i in range(stack.num_layers))
  return (streams, split(inputs) if collect else None, split(weights) if collect else None,
          None if cache is None else new_cache)
