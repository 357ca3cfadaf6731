"""Tests for research.optim: schedules, weight-decay mask, clipping, AdamW."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import optim


def _cfg(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_steps=100, schedule='linear',
      end_lr_fraction=0.1, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6,
      clip_norm=1.0,
  ))
  cfg.update(overrides)
  return cfg


@pytest.mark.parametrize('schedule, middle, quarter', [
    # Decay runs from step 100 to 1000; its middle is step 550, a quarter 325.
    ('linear', 5.5e-4, 1e-4 + 0.75 * 9e-4),
    ('cosine', 5.5e-4, 1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi / 4))),
    ('constant', 1e-3, 1e-3),
])
def test_schedule_values(schedule, middle, quarter):
  lr = optim.make_schedule(_cfg(schedule=schedule), total_steps=1000)
  end = 1e-3 if schedule == 'constant' else 1e-4
  expected = {0: 0.0, 50: 5e-4, 100: 1e-3, 325: quarter, 550: middle,
              1000: end, 5000: end}
  got = {step: float(lr(step)) for step in expected}
  np.testing.assert_allclose(list(got.values()), list(expected.values()),
                             rtol=1e-5, atol=1e-9, err_msg=str(got))


def test_schedule_without_warmup_starts_at_peak():
  lr = optim.make_schedule(_cfg(warmup_steps=0), total_steps=10)
  assert float(lr(0)) == pytest.approx(1e-3)
  assert float(lr(10)) == pytest.approx(1e-4)


def test_unknown_schedule_is_rejected():
  with pytest.raises(ValueError, match='schedule'):
    optim.make_schedule(_cfg(schedule='step'), total_steps=10)


def test_weight_decay_mask_excludes_biases_and_norms():
  params = {
      'embed': {'embedding': jnp.zeros((10, 4))},
      'dense': {'kernel': jnp.zeros((4, 4)), 'bias': jnp.zeros(4)},
      'ln': {'scale': jnp.zeros(4), 'bias': jnp.zeros(4)},
      # A scanned stack adds a leading layer axis: norms become 2-D.
      'stack': {'ln': {'scale': jnp.zeros((3, 4)), 'bias': jnp.zeros((3, 4))},
                'mlp': {'kernel': jnp.zeros((3, 4, 8))}},
      'gate': jnp.zeros(4),  # 1-D with another name: still excluded
  }
  mask = optim.weight_decay_mask(params)
  assert mask == {
      'embed': {'embedding': True},
      'dense': {'kernel': True, 'bias': False},
      'ln': {'scale': False, 'bias': False},
      'stack': {'ln': {'scale': False, 'bias': False},
                'mlp': {'kernel': True}},
      'gate': False,
  }


def test_weight_decay_mask_sees_through_partitioned_boxes():
  params = {'ln': {'scale': jnp.zeros((3, 4)), 'bias': jnp.zeros((3, 4))},
            'dense': {'kernel': jnp.zeros((3, 4, 8))}}
  boxed = jax.tree.map(lambda x: nn.Partitioned(x, ('layers', None) + (None,) * (x.ndim - 2)),
                       params)
  assert nn.meta.unbox(optim.weight_decay_mask(boxed)) == optim.weight_decay_mask(params)


def test_one_adamw_update_matches_hand_computation():
  lr, wd, eps = 0.1, 0.5, 1e-6
  # b1, b2 exact in binary, so float32 bias correction is exact too.
  cfg = _cfg(learning_rate=lr, warmup_steps=0, schedule='constant',
             weight_decay=wd, eps=eps, clip_norm=0.0, b1=0.5, b2=0.75)
  tx = optim.make_optimizer(cfg, total_steps=10)
  params = {'w': jnp.array([[1.0, 2.0], [3.0, 4.0]]), 'bias': jnp.array([0.5, -1.0])}
  grads = {'w': jnp.array([[-0.1, 0.2], [-0.3, 0.0]]), 'bias': jnp.array([1.0, -2.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  # After one step Adam's bias-corrected moments are m = g, v = g^2.
  expected = {
      k: -lr * (g / (np.abs(g) + eps) + (wd * params[k] if k == 'w' else 0))
      for k, g in grads.items()
  }
  for k in params:
    np.testing.assert_allclose(updates[k], expected[k], rtol=1e-6, atol=1e-8,
                               err_msg=k)


def test_clipping_scales_gradients_to_clip_norm():
  # With a huge eps Adam's step is ~ -lr * g / eps, linear in g, so the
  # clipped gradient is visible in the update.
  lr, eps, clip = 1.0, 1e3, 1.0
  grads = {'w': jnp.array([[3.0, 4.0]]), 'bias': jnp.array([0.0])}  # norm 5
  params = jax.tree.map(jnp.zeros_like, grads)

  def first_update(clip_norm):
    cfg = _cfg(learning_rate=lr, warmup_steps=0, schedule='constant',
               weight_decay=0.0, eps=eps, clip_norm=clip_norm)
    tx = optim.make_optimizer(cfg, total_steps=10)
    return tx.update(grads, tx.init(params), params)[0]['w']

  clipped = grads['w'] * clip / 5.0
  np.testing.assert_allclose(
      first_update(clip), -lr * clipped / (jnp.abs(clipped) + eps), rtol=1e-6)
  np.testing.assert_allclose(
      first_update(0.0), -lr * grads['w'] / (jnp.abs(grads['w']) + eps),
      rtol=1e-6)
