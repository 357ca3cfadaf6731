"""The one pure train step and eval step, for pretraining and fine-tuning alike.

`train_step(state, batch) -> (state, metrics)` is jitted once (loop.compile_step) with
shardings and donation. What it optimises is its static `objective` (objectives/base.py for
pretraining, tasks/losses.py for fine-tuning): loss terms are `{name: [total, weight]}`
pairs that batches, micro-batches and devices combine by plain addition; each loss term is
scaled by its weight over the *whole* batch before differentiating, so accumulated gradients
equal the full-batch gradient exactly (not a mean of means).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from research.objectives.base import means
from research.state import TrainState


def accumulate_gradients(loss_fn: Callable, params, batch: dict[str, jax.Array], rng: jax.Array,
                         grad_accum_steps: int = 1):
  """Gradient of `loss_fn(params, batch, rng) -> (loss, aux)`, summed with its aux over
  `grad_accum_steps` sequential micro-batches (activation memory of one micro-batch only).

  The sum equals the full-batch gradient when loss_fn normalises by whole-batch weights.
  Micro-batch i draws its dropout from fold_in(rng, i).
  """
  grad_fn = jax.grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    return grad_fn(params, batch, rng)
  # [batch, ...] -> [accum, batch / accum, ...]
  micro_batches = jax.tree.map(
      lambda x: x.reshape(grad_accum_steps, x.shape[0] // grad_accum_steps, *x.shape[1:]), batch)

  def accumulate(carry, inputs):
    index, micro = inputs
    out = grad_fn(params, micro, jax.random.fold_in(rng, index))
    return jax.tree.map(jnp.add, carry, out), None

  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
      grad_fn, params, jax.tree.map(lambda x: x[0], micro_batches), rng))
  total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum_steps), micro_batches))
  return total


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model, objective,
               tx: optax.GradientTransformation, grad_accum_steps: int = 1,
               schedule: optax.Schedule | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on `batch`, optionally as `grad_accum_steps` sequential micro-batches."""
  scales = objective.loss_scales(batch)
  step_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params, micro, rng):
    terms = objective.terms(model, params, micro, rng)
    return sum(terms[k][0] * scale for k, scale in scales.items()), terms

  grads, terms = accumulate_gradients(loss_fn, state.params, batch, step_rng, grad_accum_steps)
  metrics = objective.summarize(means(terms))
  metrics['grad_norm'] = optax.tree.norm(grads)
  if schedule is not None:
    metrics['learning_rate'] = schedule(state.step)
  params, opt_state, metrics = update_if_finite(tx, grads, state.params, state.opt_state,
                                                metrics)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def update_if_finite(tx: optax.GradientTransformation, grads, params, opt_state,
                     metrics: dict[str, jax.Array]):
  """(params, opt_state, metrics) after the optimizer's update, or the given params and
  optimizer state unchanged if the loss or gradient norm is not finite.

  Every train step ends here. A skipped update leaves params and optimizer state (Adam's
  moments, its count and hence the schedule position) exactly as they were, so no checkpoint
  ever holds a NaN; the caller still advances `step` because the batch was consumed (the data
  position and the dropout key `fold_in(rng, step)` move on). `metrics['skipped']` is 1.0 for
  a skipped step; research/loop.py stops the run after `train.max_skipped_steps` of them in a
  row.

  A `lax.cond` rather than an elementwise select of the new and old trees: the select keeps
  every old parameter and moment alive past the update, so XLA copied each donated buffer
  before updating it (docs/performance.md). Not optax.apply_if_finite: it checks
  only the gradients, keeps its counter inside the optimizer state (so no metric shows a
  skip, and every existing checkpoint would become a different model), and after its limit it
  *applies* the non-finite update.
  """
  finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])

  def update(params, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = jax.lax.cond(finite, update, lambda *state: state, params, opt_state)
  return params, opt_state, {**metrics, 'skipped': 1.0 - finite.astype(jnp.float32)}


def eval_step(params, batch: dict[str, jax.Array], *, model,
              objective) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """(metric pairs, per-row outputs) of a held-out batch: the pairs are summed over batches by
  the caller, then `summarize`d; the outputs (a task head's predictions, else none) are
  concatenated (objectives/base.py `evaluate`)."""
  return objective.evaluate(model, params, batch)


def summarize(terms: dict[str, Any], objective) -> dict[str, float]:
  """Host floats of the objective's metrics from pairs accumulated over many batches."""
  return {k: float(v) for k, v in objective.summarize(means(terms)).items()}
