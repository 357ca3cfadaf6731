"""Attention masks and position biases as data: what makes one Block BERT, GPT, T5 or UniLM.

Every family's difference in *who sees whom* is computed here, once per stack, at the top of a
model (as flax `examples/wmt` builds its encoder, decoder and encoder-decoder masks), and the
Blocks stay generic. A mask comes from per-row arrays, never from a model-class branch:

  order      [batch|1, length]  where each token stands in the order the model reads it: the
             position for left-to-right, reversed for right-to-left, a sampled permutation's
             rank for XLNet's factorization order (Yang et al. 2019, Sec 2.2);
  kind       'full' (BERT: Devlin et al. 2019, Sec 3), 'causal' (GPT: see earlier-or-same
             order), 'strictly_causal' (XLNet's query stream: strictly earlier only);
  prefix_len [batch]            keys at order < prefix_len are seen by every query: the
             source of UniLM's sequence-to-sequence mask (Dong et al. 2019, Fig. 1) and
             T5's prefix LM (Raffel et al. 2020, Sec 3.2.1, Fig. 3); prefix_len >= length
             makes a causal row bidirectional, 0 leaves it causal;
  window     GPT-3's locally banded layers (Brown et al. 2020, Sec 2.1): order distance < w;
  segments   packing ids: tokens of different packed sequences never see each other.

T5's relative position bias (Raffel et al. 2020, Sec 2.1; Shaw et al. 2018) maps each
query-key offset to one of `num_buckets` buckets, half per direction when bidirectional:
exact for small offsets, logarithmic up to `max_distance`, then constant. The bucket is data
too; the learned per-head scalar of each bucket lives in layers.RelativePositionBias.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

KINDS = ('full', 'causal', 'strictly_causal')


def attention_mask(q_order: jax.Array, k_order: jax.Array, k_valid: jax.Array | None = None, *,
                   kind: str = 'full', prefix_len: jax.Array | None = None, window: int = 0,
                   q_segments: jax.Array | None = None,
                   k_segments: jax.Array | None = None) -> jax.Array:
  """Boolean mask [batch, 1, queries, keys]: True where a query may attend to a key.

  Args:
    q_order: [batch|1, queries] each query's place in the reading order.
    k_order: [batch|1, keys] each key's place in the reading order.
    k_valid: [batch, keys] False for padding, not-yet-written cache slots, left padding.
    kind: one of KINDS.
    prefix_len: [batch] keys with order < prefix_len are visible to every query.
    window: > 0: a query sees only keys fewer than `window` places back (GPT-3 band).
    q_segments, k_segments: [batch, queries] / [batch, keys] packing ids (0 = padding).
  """
  if kind not in KINDS:
    raise ValueError(f'unknown mask kind {kind!r}; use one of {KINDS}')
  q = q_order[:, :, None]  # [batch|1, queries, 1]
  k = k_order[:, None, :]  # [batch|1, 1, keys]
  allowed = jnp.ones(jnp.broadcast_shapes(q.shape, k.shape), bool)
  if kind == 'causal':
    allowed = k <= q
  elif kind == 'strictly_causal':
    allowed = k < q
  if prefix_len is not None:
    allowed |= k < prefix_len[:, None, None]
  if window > 0:
    allowed &= (q - k) < window
  if k_valid is not None:
    allowed &= k_valid[:, None, :].astype(bool)
  if q_segments is not None:
    allowed &= q_segments[:, :, None] == k_segments[:, None, :]
  return allowed[:, None]  # [batch, 1, queries, keys]


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool,
                             num_buckets: int = 32, max_distance: int = 128) -> jax.Array:
  """T5's bucket of each key-minus-query offset (same shape, int32).

  Bidirectional: buckets [0, n/2) for keys before the query and [n/2, n) after. Within a
  direction the first half of its buckets are exact offsets, the rest logarithmically spaced
  up to max_distance (t5 / mesh_tensorflow `_relative_position_bucket`). With the defaults
  the last bucket begins at offset 91 (bidirectional) or 113 (causal).
  """
  n = -relative_position  # > 0: key before the query
  bucket = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    bucket += (n < 0).astype(n.dtype) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)  # a causal stack never sees the future: one bucket for it
  max_exact = num_buckets // 2
  # Offsets max_exact .. max_distance share num_buckets - max_exact log-spaced buckets.
  log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(
      max_distance / max_exact)
  large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(n.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(n < max_exact, n, large)
