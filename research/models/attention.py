"""Multi-head attention over what it is given to attend to, and its key/value cache.

`MultiHeadAttention(x_q, x_kv=None, mask, bias=None, cache=...)` (flaxformer's
`inputs_q, inputs_kv` signature): self-attention when `x_kv` is None, cross-attention
(an encoder-decoder's decoder reading the encoder's output, Vaswani et al. 2017, Sec 3.2.3)
otherwise. Masks and biases are data built once at the top of a model (masks.py).

How `x_kv`, `cache` and `cache_index` combine:

  x_kv   cache  cache_index  what runs                                       cache returned
  None   None   None         self-attention over x_q (training, scoring)     None
  None   dict   slot         incremental self-attention: x_q's keys/values   updated cache
                             are written at slots [slot, slot + q_len), the
                             queries attend over every cache slot
  given  -      None         cross-attention over x_kv                       x_kv's keys/values
  None   dict   None         cross-attention over cached keys/values         the same cache

so an encoder-decoder computes the encoder's keys and values once, at prefill, and every
decoding step reads them from the cache.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.config import ModelConfig
from research.models.layers import Dropout, constrain, dense_init, kernel_std, zeros_init


def init_kv_cache(batch: int, length: int, cfg: ModelConfig) -> dict:
  """Empty cache for one layer: keys and values [batch, heads, length, head_dim].

  Heads before slots: each decode step reads every head's keys as one contiguous
  [length, head_dim] matrix, the layout the attention einsums consume, so XLA does not
  transpose the whole cache in every layer at every step (measured: `benchmarks/generation.py`)."""
  shape = (batch, cfg.num_heads, length, cfg.head_dim)
  return {'k': jnp.zeros(shape, cfg.compute_dtype), 'v': jnp.zeros(shape, cfg.compute_dtype)}


def init_stack_cache(cfg: ModelConfig, batch: int, length: int, num_layers: int) -> dict:
  """A stack's KV cache of `length` slots: per-layer self-attention keys/values and which
  slots hold real tokens. 'layers' is a list of per-layer {'self': {'k', 'v'}} or, with
  cfg.scan_layers, one such dict whose arrays carry a leading layers axis
  [layers, batch, heads, length, head_dim] (what the scanned Stack slices)."""
  if cfg.scan_layers:
    one = init_kv_cache(batch, length, cfg)
    layers = {'self': jax.tree.map(lambda x: jnp.broadcast_to(x, (num_layers, *x.shape)), one)}
  else:
    layers = [{'self': init_kv_cache(batch, length, cfg)} for _ in range(num_layers)]
  return {'layers': layers, 'key_valid': jnp.zeros((batch, length), bool)}


def cache_batch_axes(cfg: ModelConfig, cache: dict):
  """The batch axis of every array of a model's cache ({'layers': ..., 'key_valid', ...}):
  1 for the stacked per-layer arrays of a scanned Stack, else 0 (beam search reorders rows)."""
  layers = 1 if cfg.scan_layers else 0
  return {k: jax.tree.map(lambda _: layers if k == 'layers' else 0, v) for k, v in cache.items()}


def slots_and_keys(valid: jax.Array, cache: dict | None, cache_index: jax.Array | int):
  """Where a call's tokens sit and what they may attend over.

  valid [batch, length]: which of the new tokens are real. Without a cache the keys are the
  tokens themselves; with one, the tokens take slots cache_index .. cache_index + length and
  the keys are every cache slot, real where a token was ever written.
  Returns (query slots [1, length], key slots [1, keys], key validity [batch, keys]).
  """
  length = valid.shape[1]
  query_slots = cache_index + jnp.arange(length)[None]  # [1, length]
  if cache is None:
    return query_slots, query_slots, valid
  key_valid = jax.lax.dynamic_update_slice(cache['key_valid'], valid.astype(bool),
                                           (0, cache_index))
  return query_slots, jnp.arange(key_valid.shape[1])[None], key_valid


class HeadsDense(nn.Module):
  """The projection from d_model to (heads, head_dim) (`to_heads`: query, key, value) or back
  (the output), computed as one 2-D matmul.

  The kernel keeps nn.DenseGeneral's shape and axis names ([d_model, heads, head_dim] or
  [heads, head_dim, d_model]), so checkpoints, the HF converters and the sharding rules see
  the same tree. It is reshaped to [d_model, heads x head_dim] for the matmul because XLA:CPU
  computes a 3-D kernel's gradient in [heads, head_dim, d_model] order and copies it into the
  kernel's layout: 340 MB of copies a step at GPT-2 124M, none as a 2-D matmul (283 MB
  fewer copies in all; GPT-2 124M step, one process, three rounds: 2,848 / 2,877 / 3,062 ms
  with nn.DenseGeneral, 2,773 / 2,859 / 2,853 ms here)."""
  cfg: ModelConfig
  std: float
  to_heads: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [..., d_model] -> [..., heads, head_dim] if to_heads, else [..., heads, head_dim] ->
    [..., d_model]."""
    cfg = self.cfg
    heads = (cfg.num_heads, cfg.head_dim)
    if self.to_heads:
      lead, shape, out_shape = x.shape[:-1], (cfg.d_model, *heads), heads
      names, out_names = ('embed', 'heads', 'kv'), ('heads', 'kv')
    else:
      lead, shape, out_shape = x.shape[:-2], (*heads, cfg.d_model), (cfg.d_model,)
      names, out_names = ('heads', 'kv', 'embed'), ('embed',)
    kernel = self.param('kernel', dense_init(self.std, names), shape, jnp.float32)
    inner = cfg.num_heads * cfg.head_dim
    kernel = kernel.reshape((-1, inner) if self.to_heads else (inner, -1))  # 2-D
    y = jnp.dot(x.reshape(*lead, -1).astype(cfg.compute_dtype),  # [..., d_model or inner]
                kernel.astype(cfg.compute_dtype))
    if cfg.use_bias:
      bias = self.param('bias', zeros_init(out_names), out_shape, jnp.float32)
      y = y + bias.reshape(-1).astype(cfg.compute_dtype)
    return y.reshape(*lead, *out_shape)


class MultiHeadAttention(nn.Module):
  """Vaswani et al. 2017, Sec 3.2.2: softmax(Q K^T / sqrt(d_k) + bias) V over `num_heads` heads."""
  cfg: ModelConfig
  residual_scale: float = 1.0  # the output projection's init std is multiplied by it

  @nn.compact
  def __call__(self, x_q: jax.Array, x_kv: jax.Array | None = None, *, mask: jax.Array,
               bias: jax.Array | None = None, deterministic: bool, cache: dict | None = None,
               cache_index: jax.Array | int | None = None):
    """x_q [batch, q_len, d_model]; x_kv [batch, kv_len, d_model]; mask [batch, 1, q_len, k_len];
    bias [1|batch, heads, q_len, k_len] added to the logits (T5's relative positions).

    Returns (output [batch, q_len, d_model], weights [batch, heads, q_len, k_len], cache).
    """
    cfg = self.cfg
    dtype = cfg.compute_dtype
    # T5 leaves out the 1/sqrt(d_k) of Eq. 1 and initialises queries that much smaller
    # instead (Mesh TensorFlow's init); same function at init, different parametrisation.
    kv_std = kernel_std(cfg, cfg.d_model)
    q_std = kv_std if cfg.attention_scale else kv_std / math.sqrt(cfg.head_dim)
    out_std = kernel_std(cfg, cfg.num_heads * cfg.head_dim) * self.residual_scale
    proj = lambda name, std: HeadsDense(cfg, std, to_heads=True, name=name)
    heads = ('batch', 'length', 'heads', 'kv')  # Megatron: heads split over 'model'
    q = constrain(proj('query', q_std)(x_q), heads)  # [batch, q_len, heads, head_dim]
    if cfg.attention_scale:
      q = q / jnp.sqrt(cfg.head_dim).astype(dtype)

    if x_kv is None and cache is not None and cache_index is None:
      k, v = cache['k'], cache['v']  # cross-attention: the encoder's, computed at prefill
    else:
      source = x_q if x_kv is None else x_kv
      # Heads-first, the cache's layout: [batch, heads, kv_len, head_dim].
      k = constrain(proj('key', kv_std)(source), heads).transpose(0, 2, 1, 3)
      v = constrain(proj('value', kv_std)(source), heads).transpose(0, 2, 1, 3)
      if x_kv is not None:
        cache = {'k': k, 'v': v}
      elif cache is not None:
        start = (0, 0, cache_index, 0)
        k = jax.lax.dynamic_update_slice(cache['k'], k.astype(cache['k'].dtype), start)
        v = jax.lax.dynamic_update_slice(cache['v'], v.astype(cache['v'].dtype), start)
        cache = {'k': k, 'v': v}  # [batch, heads, cache_len, head_dim]

    logits = jnp.einsum('bqhd,bhkd->bhqk', q, k)  # [batch, heads, q_len, k_len]
    # Softmax in float32 even under bfloat16 compute: masked logits must underflow to 0.
    logits = logits.astype(jnp.float32)
    if bias is not None:
      logits = logits + bias
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    # A query that may see no key (XLNet's first token in the order; a left-padding slot)
    # attends to nothing, rather than uniformly to every masked key.
    weights = jax.nn.softmax(logits, axis=-1) * mask.any(-1, keepdims=True)
    dropped = Dropout(cfg.attention_dropout)(weights, deterministic=deterministic)
    out = jnp.einsum('bhqk,bhkd->bqhd', dropped.astype(dtype), v)  # [batch, q_len, heads, head_dim]
    out = HeadsDense(cfg, out_std, to_heads=False, name='out')(out)
    return out, weights, cache


def residual_init_scale(cfg: ModelConfig, num_layers: int) -> float:
  """GPT-2 Sec 2.3: residual projections start 1 / sqrt(2 * layers) smaller (two per block)."""
  return 1 / math.sqrt(2 * num_layers) if cfg.scaled_residual_init else 1.0
