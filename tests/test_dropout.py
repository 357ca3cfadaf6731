"""layers.Dropout: Bernoulli(rate) zeros from 16-bit draws, survivors rescaled, expectation kept."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models.layers import Dropout, uniform_uint16

SHAPE = (64, 128, 129)  # an odd last axis: its last value comes from half a word


def apply(rate, x, seed=0, deterministic=False):
  return Dropout(rate).apply({}, x, deterministic, rngs={'dropout': jax.random.key(seed)})


def test_drop_rate_and_rescaling():
  x = jnp.ones(SHAPE)
  y = np.asarray(apply(0.1, x))
  p = round(0.1 * 2**16) / 2**16  # the rate the 16-bit threshold realises
  n = y.size
  dropped = (y == 0).mean()
  assert abs(dropped - p) < 4 * np.sqrt(p * (1 - p) / n)  # 4 sigma of a binomial
  np.testing.assert_array_equal(np.unique(y), np.float32([0, 1 / (1 - p)]))
  assert abs(y.mean() - 1.0) < 4 * np.sqrt(p / (1 - p) / n)  # E[y] = x
  # Neighbours, drawn from the two halves of one 32-bit word, are dropped independently.
  pairs = (y[..., :128:2] == 0) & (y[..., 1:128:2] == 0)
  assert abs(pairs.mean() - p * p) < 4 * np.sqrt(p * p / pairs.size)


def test_mask_follows_the_rng():
  x = jnp.ones((8, 256))
  np.testing.assert_array_equal(apply(0.5, x, seed=1), apply(0.5, x, seed=1))
  assert (apply(0.5, x, seed=1) != apply(0.5, x, seed=2)).mean() > 0.3


def test_identity_and_edge_rates():
  x = jax.random.normal(jax.random.key(0), (4, 33))
  np.testing.assert_array_equal(apply(0.1, x, deterministic=True), x)
  np.testing.assert_array_equal(apply(0.0, x), x)
  np.testing.assert_array_equal(apply(1.0, x), jnp.zeros_like(x))
  with pytest.raises(ValueError, match='not a probability'):
    apply(1.5, x)


def test_uniform_uint16_covers_its_range():
  bits = np.asarray(uniform_uint16(jax.random.key(3), (1000, 257))).astype(np.int64)
  assert bits.shape == (1000, 257)
  # Each of the 16 bits is set half the time, in the words' low and high halves alike.
  for half in (bits[:, 0::2], bits[:, 1::2]):
    ones = np.stack([(half >> b) & 1 for b in range(16)]).reshape(16, -1).mean(1)
    assert np.all(np.abs(ones - 0.5) < 4 * 0.5 / np.sqrt(half.size)), ones
