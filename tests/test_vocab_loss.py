"""The chunked vocabulary loss equals the logits-then-cross-entropy it replaces, gradients too."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import models
from research.models import presets, vocab_loss
from research.models.config import ModelConfig


def reference(hidden, kernel, targets, weights):
  logits = jnp.einsum('bld,vd->blv', hidden, kernel)
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return jnp.sum(cross_entropy * weights), cross_entropy, correct


def data(batch=3, length=13, d=8, vocab=50, seed=0):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=(batch, length, d)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(vocab, d)), jnp.float32)
  targets = rng.integers(0, vocab, (batch, length))
  best = np.argmax(np.einsum('bld,vd->blv', hidden, kernel), -1)
  targets = jnp.asarray(np.where(rng.random((batch, length)) < 0.4, best, targets), jnp.int32)
  weights = jnp.asarray(rng.random((batch, length)) > 0.3, jnp.float32)
  return hidden, kernel, targets, weights


@pytest.mark.parametrize('chunk_logits', [1, 3 * 4 * 50, 10**9])  # 1, 4 and all 13 positions
def test_loss_metrics_and_gradients_equal_the_full_logits(chunk_logits):
  hidden, kernel, targets, weights = data()
  fused = lambda h, k: vocab_loss.vocab_cross_entropy(h, k, targets, weights,
                                                      chunk_logits=chunk_logits, min_rows=1)
  out = jax.jit(fused)(hidden, kernel)
  total, cross_entropy, correct = reference(hidden, kernel, targets, weights)
  np.testing.assert_allclose(out.total, total, rtol=1e-5)
  np.testing.assert_allclose(out.cross_entropy, cross_entropy, rtol=1e-5)
  np.testing.assert_array_equal(out.correct, correct)
  assert 0 < float(correct.sum()) < correct.size  # the data has right and wrong positions

  # A loss that scales the total (objectives divide by the batch weight) and adds another
  # term: the gradient is the reference's, through the hidden states and the kernel.
  def loss(fn, h, k):
    return 0.37 * fn(h, k) + jnp.sum(h ** 2) * 1e-3
  ours = jax.jit(jax.grad(lambda h, k: loss(lambda *a: fused(*a).total, h, k), (0, 1)))
  ref = jax.grad(lambda h, k: loss(lambda *a: reference(*a, targets, weights)[0], h, k), (0, 1))
  for got, want in zip(ours(hidden, kernel), ref(hidden, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_zero_weight_positions_get_no_gradient():
  hidden, kernel, targets, weights = data()
  weights = weights.at[:, 5:].set(0)
  grad = jax.grad(lambda h: vocab_loss.vocab_cross_entropy(
      h, kernel, targets, weights, chunk_logits=4 * 3 * 50, min_rows=1).total)(hidden)
  assert not np.any(grad[:, 5:])
  assert np.all(np.any(grad[:, :5] != 0, -1) == (weights[:, :5] > 0))


def test_chunk_length_is_a_power_of_two_within_the_budget_with_enough_rows():
  chunk = functools.partial(vocab_loss.chunk_length, chunk_logits=2**22, min_rows=256)
  assert chunk(batch=32, length=128, vocab=8000) == 16  # the budget: 512 rows
  assert chunk(batch=32, length=12, vocab=8000) == 16  # beyond the length: one padded chunk
  assert chunk(batch=512, length=128, vocab=50257) == 1
  assert chunk(batch=4, length=128, vocab=50257) == 64  # the budget's 16 -> 256 rows
  assert chunk(batch=3, length=1024, vocab=50257) == 128  # 86 rows -> 384
  assert chunk(batch=3, length=100, vocab=50257) == 128  # at most the length's power of two


@pytest.mark.parametrize('family', ['gpt2', 't5', 't5.1.1', 'bart'])
def test_models_score_their_targets_as_their_logits_do(family):
  """A model given vocab_targets returns the weighted cross-entropy of its own logits, and the
  same parameter gradients: tied (GPT-2, BART), tied and rescaled (T5), untied (T5.1.1)."""
  cfg = ModelConfig(**{**presets.FAMILIES[family], 'vocab_size': 97, 'max_len': 32,
                       'd_model': 32, 'num_layers': 2, 'num_heads': 4, 'd_ff': 64,
                       'dropout': 0.0, 'attention_dropout': 0.0})
  model = models.build(cfg)
  rng = np.random.default_rng(0)
  source = jnp.asarray(rng.integers(1, 97, (2, 9)), jnp.int32)
  targets = jnp.asarray(rng.integers(1, 97, (2, 7)), jnp.int32)
  weights = jnp.asarray(rng.random((2, 7)) > 0.3, jnp.float32)
  inputs = (source[:, :7],) if cfg.arch == 'decoder' else (source, targets)
  params = nn.meta.unbox(model.init(jax.random.key(0), *inputs)['params'])

  def fused(p):
    return model.apply({'params': p}, *inputs, vocab_targets=(targets, weights)).vocab_loss.total

  def full(p):
    logits = model.apply({'params': p}, *inputs).logits
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights)

  np.testing.assert_allclose(fused(params), full(params), rtol=1e-5)
  got, want = jax.grad(fused)(params), jax.grad(full)(params)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6), got, want)
  assert ('lm_head' in got) == (family == 't5.1.1')  # the untied kernel got its gradient
