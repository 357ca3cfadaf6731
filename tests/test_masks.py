"""models/masks.py: every mask kind from order arrays, and T5's relative position buckets."""
import jax.numpy as jnp
import numpy as np
import pytest

from research.models.masks import attention_mask, relative_position_bucket

POS = jnp.arange(5)[None]  # [1, 5]


def allowed(*args, **kwargs):
  return np.asarray(attention_mask(*args, **kwargs))[:, 0]  # [batch, q, k]


def test_full_sees_every_valid_key():
  valid = jnp.array([[1, 1, 1, 0, 0]])
  m = allowed(POS, POS, valid)
  assert m.shape == (1, 5, 5)
  np.testing.assert_array_equal(m[0], np.tile([1, 1, 1, 0, 0], (5, 1)).astype(bool))


def test_causal_and_strictly_causal():
  causal = allowed(POS, POS, kind='causal')[0]
  np.testing.assert_array_equal(causal, np.tril(np.ones((5, 5), bool)))
  strict = allowed(POS, POS, kind='strictly_causal')[0]
  np.testing.assert_array_equal(strict, np.tril(np.ones((5, 5), bool), -1))


def test_order_makes_any_factorization():
  """Right-to-left = causal over the reversed order; a permutation = XLNet's order."""
  r2l = allowed(4 - POS, 4 - POS, kind='causal')[0]
  np.testing.assert_array_equal(r2l, np.triu(np.ones((5, 5), bool)))
  order = jnp.array([[2, 0, 4, 1, 3]])  # token i is read at step order[i]
  m = allowed(order, order, kind='causal')[0]
  for i in range(5):
    for j in range(5):
      assert m[i, j] == (order[0, j] <= order[0, i])


def test_prefix_len_per_row():
  """UniLM seq2seq / prefix LM: keys inside the prefix are seen by all, the rest causally;
  prefix_len >= length makes a causal row bidirectional, 0 leaves it causal."""
  prefix = jnp.array([2, 5, 0])
  m = allowed(POS, POS, jnp.ones((3, 5)), kind='causal', prefix_len=prefix)
  expected_row0 = np.tril(np.ones((5, 5), bool))
  expected_row0[:, :2] = True
  np.testing.assert_array_equal(m[0], expected_row0)
  np.testing.assert_array_equal(m[1], np.ones((5, 5), bool))
  np.testing.assert_array_equal(m[2], np.tril(np.ones((5, 5), bool)))


def test_window_band():
  m = allowed(POS, POS, kind='causal', window=2)[0]
  q, k = np.meshgrid(np.arange(5), np.arange(5), indexing='ij')
  np.testing.assert_array_equal(m, (k <= q) & (q - k < 2))


def test_packing_segments_and_cache_slots():
  segments = jnp.array([[1, 1, 2, 2, 0]])
  m = allowed(POS, POS, segments > 0, kind='causal', q_segments=segments, k_segments=segments)[0]
  assert m[1, 0] and not m[2, 1] and m[3, 2] and not m[4].any()
  # Decoding: one query at slot 3 over a 5-slot cache whose slots 4+ are not written yet.
  m = allowed(jnp.array([[3]]), POS, jnp.array([[1, 1, 1, 1, 0]]), kind='causal')[0]
  np.testing.assert_array_equal(m, [[True, True, True, True, False]])


def test_unknown_kind():
  with pytest.raises(ValueError, match='unknown mask kind'):
    attention_mask(POS, POS, kind='sideways')


@pytest.mark.parametrize('bidirectional,last_start,last_bucket', [(True, 91, 15), (False, 113, 31)])
def test_relative_buckets_golden(bidirectional, last_start, last_bucket):
  """T5 defaults (32 buckets, max distance 128): the last bucket of keys *before* the query
  starts at offset 91 (bidirectional: 16 buckets per direction) or 113 (causal: 32)."""
  offsets = -jnp.arange(200)  # key - query: keys 0..199 positions back
  buckets = np.asarray(relative_position_bucket(offsets, bidirectional=bidirectional))
  assert buckets[last_start] == last_bucket and buckets[last_start - 1] == last_bucket - 1
  assert (buckets[last_start:] == last_bucket).all()
  exact = 8 if bidirectional else 16  # half of a direction's buckets are exact offsets
  np.testing.assert_array_equal(buckets[:exact], np.arange(exact))
  assert (np.diff(buckets) >= 0).all()


def test_relative_buckets_directions():
  after = np.asarray(relative_position_bucket(jnp.arange(1, 6), bidirectional=True))
  np.testing.assert_array_equal(after, 16 + np.arange(1, 6))  # keys after: the upper half
  causal_future = np.asarray(relative_position_bucket(jnp.arange(1, 6), bidirectional=False))
  assert (causal_future == 0).all()  # never attended; share the offset-0 bucket
