"""Multi-head scaled dot-product attention, the masks that make a model BERT or GPT, and the KV cache.

The whole encoder/decoder distinction of "why is BERT not GPT?" lives in `attention_mask`:
an encoder lets every position see every other (BERT paper Sec 3, "deep bidirectional"), a
decoder lets position i see only positions <= i (GPT-1 paper Sec 3.1), and GPT-3's sparse
layers further restrict a query to a local band (GPT-3 Sec 2.1, after Child et al. 2019).
Masks (`make_mask`) are built once at the top of a model (slots, not tokens, so that a KV cache and left
padding need no special case) and passed down to a generic `Block`.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.config import ModelConfig
from research.models.layers import dense_init


def make_mask(query_slots: jax.Array, key_slots: jax.Array, key_valid: jax.Array, *,
                   causal: bool, window: int = 0) -> jax.Array:
  """Boolean mask [batch, 1, queries, keys]: True where a query may attend to a key.

  Args:
    query_slots: [queries] time index of each query (0.. for a full pass; cache_index.. when
      decoding with a cache).
    key_slots: [keys] time index of each key.
    key_valid: [batch, keys] False for padding (right padding in an encoder, left padding of
      prompts in a decoder, not-yet-written cache slots).
    causal: decoder (True) or encoder (False).
    window: if > 0, a query sees only keys less than `window` slots back (GPT-3 local band).
  """
  q = query_slots[:, None]  # [queries, 1]
  k = key_slots[None, :]  # [1, keys]
  allowed = jnp.ones((q.shape[0], k.shape[1]), bool)
  if causal:
    allowed &= k <= q
  if window > 0:
    allowed &= (q - k) < window
  return allowed[None, None, :, :] & key_valid[:, None, None, :].astype(bool)


def init_kv_cache(batch: int, length: int, cfg: ModelConfig) -> dict:
  """Empty cache for one layer: keys and values [batch, heads, length, head_dim].

  Heads before slots: each decode step reads every head's keys as one contiguous
  [length, head_dim] matrix, the layout the attention einsums consume, so XLA does not
  transpose the whole cache in every layer at every step (measured: `benchmarks/generation.py`)."""
  shape = (batch, cfg.num_heads, length, cfg.head_dim)
  return {'k': jnp.zeros(shape, cfg.compute_dtype), 'v': jnp.zeros(shape, cfg.compute_dtype)}


class MultiHeadAttention(nn.Module):
  """Vaswani et al. 2017, Sec 3.2.2: softmax(Q K^T / sqrt(d_k)) V over `num_heads` heads."""
  cfg: ModelConfig
  residual_std: float

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, deterministic: bool,
               cache: dict | None = None, cache_index: jax.Array | None = None):
    """x: [batch, q_len, d_model]; mask: [batch, 1, q_len, k_len].

    With `cache`, the new keys/values are written at slots [cache_index, cache_index + q_len)
    and attention runs over all cache slots (k_len = cache length). Returns
    (output [batch, q_len, d_model], weights [batch, heads, q_len, k_len], new cache or None).
    """
    cfg = self.cfg
    dtype = cfg.compute_dtype
    proj = lambda name: nn.DenseGeneral(
        (cfg.num_heads, cfg.head_dim), dtype=dtype, name=name,
        kernel_init=dense_init(cfg.init_std, ('embed', 'heads', 'kv')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('heads', 'kv')))
    q = proj('query')(x)  # [batch, q_len, heads, head_dim]
    # Keys and values heads-first, the cache's layout: [batch, heads, q_len, head_dim].
    k = proj('key')(x).transpose(0, 2, 1, 3)
    v = proj('value')(x).transpose(0, 2, 1, 3)

    if cache is not None:
      start = (0, 0, cache_index, 0)
      k = jax.lax.dynamic_update_slice(cache['k'], k.astype(cache['k'].dtype), start)
      v = jax.lax.dynamic_update_slice(cache['v'], v.astype(cache['v'].dtype), start)
      cache = {'k': k, 'v': v}  # [batch, heads, cache_len, head_dim]

    q = q / jnp.sqrt(cfg.head_dim).astype(dtype)
    logits = jnp.einsum('bqhd,bhkd->bhqk', q, k)  # [batch, heads, q_len, k_len]
    # Softmax in float32 even under bfloat16 compute: masked logits must underflow to 0.
    logits = jnp.where(mask, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    dropped = nn.Dropout(cfg.attention_dropout)(weights, deterministic=deterministic)
    out = jnp.einsum('bhqk,bhkd->bqhd', dropped.astype(dtype), v)  # [batch, q_len, heads, head_dim]
    out = nn.DenseGeneral(
        cfg.d_model, axis=(-2, -1), dtype=dtype, name='out',
        kernel_init=dense_init(self.residual_std, ('heads', 'kv', 'embed')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))(out)
    return out, weights, cache


def residual_init_std(cfg: ModelConfig) -> float:
  """GPT-2 Sec 2.3: residual projections start at std / sqrt(2 * layers) (two per block)."""
  if cfg.scaled_residual_init:
    return cfg.init_std / math.sqrt(2 * cfg.num_layers)
  return cfg.init_std
