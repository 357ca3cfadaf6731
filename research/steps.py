"""Pure train and eval steps, and the loss of each pretraining objective.

`train_step(state, batch) -> (state, metrics)` is jitted once (train.py) with shardings and
donation. Loss terms are `{name: [total, weight]}` pairs so that batches, micro-batches and
devices combine by plain addition; `means` divides at the end (train_step returns means,
eval_step returns pairs that the caller sums over the held-out batches).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research.models.config import ModelConfig
from research.models.decoder import GPT
from research.models.encoder import BertForPretraining
from research.state import TrainState

ENCODER_OBJECTIVES = ('mlm_nsp', 'mlm')
# The batch entry that weights each loss term (to normalise it over the whole batch).
WEIGHT_KEYS = {'loss': 'weights', 'mlm_loss': 'mlm_weights', 'nsp_loss': 'nsp_weights'}
DECODER_OBJECTIVES = ('clm',)


@dataclasses.dataclass(frozen=True)
class Objective:
  """Static description of what a step optimises (hashable: part of the jitted function)."""
  name: str  # 'mlm_nsp' | 'mlm' | 'clm'
  max_predictions: int = 20  # MLM: logits are computed only at this many positions per row

  def __post_init__(self):
    if self.name not in ENCODER_OBJECTIVES + DECODER_OBJECTIVES:
      raise ValueError(f'unknown objective {self.name!r}; use one of '
                       f'{ENCODER_OBJECTIVES + DECODER_OBJECTIVES} (--config.objective.name)')

  @property
  def is_encoder(self) -> bool:
    return self.name in ENCODER_OBJECTIVES


def build_model(objective: Objective, cfg: ModelConfig) -> nn.Module:
  return BertForPretraining(cfg) if objective.is_encoder else GPT(cfg)


def init_params(model: nn.Module, objective: Objective, seq_len: int, rng: jax.Array):
  ids = jnp.zeros((1, seq_len), jnp.int32)
  if objective.is_encoder:
    return model.init(rng, ids, ids, jnp.ones_like(ids))['params']
  return model.init(rng, ids)['params']


def _pair(total, weight) -> jax.Array:
  return jnp.stack([jnp.sum(total), jnp.sum(weight)]).astype(jnp.float32)


def _token_terms(prefix: str, logits, targets, weights) -> dict[str, jax.Array]:
  """Cross-entropy and accuracy summed over weighted positions."""
  xent = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return {f'{prefix}loss': _pair(xent * weights, weights),
          f'{prefix}accuracy': _pair(correct * weights, weights)}


def loss_terms(model: nn.Module, objective: Objective, params, batch: dict[str, jax.Array],
               rng: jax.Array | None) -> dict[str, jax.Array]:
  """Metric pairs of one (micro-)batch; `rng=None` means deterministic (eval)."""
  deterministic = rng is None
  rngs = None if deterministic else {'dropout': rng}
  if not objective.is_encoder:
    out = model.apply({'params': params}, batch['input_ids'], deterministic=deterministic,
                      rngs=rngs)
    return _token_terms('', out.logits, batch['targets'], batch['weights'])

  # BERT: gather the predicted positions (weight 1 sorts first; top_k is stable) so the
  # vocab-sized projection runs on max_predictions rows instead of every token.
  k = min(objective.max_predictions, batch['mlm_weights'].shape[1])
  _, positions = jax.lax.top_k(batch['mlm_weights'], k)  # [batch, k]
  take = lambda x: jnp.take_along_axis(x, positions, axis=1)
  out = model.apply({'params': params}, batch['input_ids'], batch['segment_ids'],
                    batch['attention_mask'], mlm_positions=positions,
                    deterministic=deterministic, rngs=rngs)
  terms = _token_terms('mlm_', out['mlm_logits'], take(batch['mlm_targets']),
                       take(batch['mlm_weights']))
  if objective.name == 'mlm_nsp':
    terms.update(_token_terms('nsp_', out['nsp_logits'], batch['nsp_labels'],
                              batch['nsp_weights']))
  return terms


def _loss_keys(objective: Objective) -> tuple[str, ...]:
  if not objective.is_encoder:
    return ('loss',)
  return ('mlm_loss', 'nsp_loss') if objective.name == 'mlm_nsp' else ('mlm_loss',)


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


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               objective: Objective, tx: optax.GradientTransformation,
               grad_accum_steps: int = 1,
               schedule: optax.Schedule | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on `batch`, optionally as `grad_accum_steps` sequential micro-batches.

  Each loss term is normalised by its weight over the *whole* batch before differentiating,
  so accumulated gradients equal the full-batch gradient exactly (not a mean of means).
  """
  keys = _loss_keys(objective)
  normalizers = {k: jnp.maximum(jnp.sum(batch[WEIGHT_KEYS[k]]), 1.0) for k in keys}
  step_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params, micro, rng):
    terms = loss_terms(model, objective, params, micro, rng)
    return sum(terms[k][0] / normalizers[k] for k in keys), terms

  grads, metrics = accumulate_gradients(loss_fn, state.params, batch, step_rng,
                                        grad_accum_steps)

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = means(metrics, objective)
  metrics['grad_norm'] = optax.tree.norm(grads)
  if schedule is not None:
    metrics['learning_rate'] = schedule(state.step)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return skip_if_nonfinite(state, new_state, metrics)


def skip_if_nonfinite(old: TrainState, new: TrainState,
                      metrics: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
  """`new`, or `old`'s params and optimizer state if the loss or gradient norm is not finite.

  Called at the end of every train step. A skipped update leaves params and optimizer state
  (Adam's moments, its count and hence the schedule position) exactly as they were, so no
  checkpoint ever holds a NaN; `step` still advances because the batch was consumed (the
  data position and the dropout key `fold_in(rng, step)` move on). `metrics['skipped']` is 1.0
  for a skipped step; research/loop.py stops the run after `train.max_skipped_steps` of them
  in a row.

  Not optax.apply_if_finite: it checks only the gradients, keeps its counter inside the
  optimizer state (so no metric shows a skip, and every existing checkpoint would become a
  different model), and after its limit it *applies* the non-finite update.
  """
  finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(metrics['grad_norm'])
  keep = lambda n, o: jnp.where(finite, n, o)
  state = new.replace(params=jax.tree.map(keep, new.params, old.params),
                      opt_state=jax.tree.map(keep, new.opt_state, old.opt_state))
  return state, {**metrics, 'skipped': 1.0 - finite.astype(jnp.float32)}


def eval_step(params, batch: dict[str, jax.Array], *, model: nn.Module,
              objective: Objective) -> dict[str, jax.Array]:
  return loss_terms(model, objective, params, batch, rng=None)


def means(metrics: dict[str, Any], objective: Objective) -> dict[str, Any]:
  """[total, weight] pairs -> means, plus the total loss (encoders) or perplexity (LMs)."""
  values = {k: v[0] / jnp.maximum(v[1], 1e-9) for k, v in metrics.items()}
  if objective.is_encoder:
    values['loss'] = sum(values[k] for k in _loss_keys(objective))
  else:
    values['perplexity'] = jnp.exp(values['loss'])
  return values


def summarize(metrics: dict[str, Any], objective: Objective) -> dict[str, float]:
  """Host floats of `means` (for eval results accumulated over many batches)."""
  return {k: float(v) for k, v in means(metrics, objective).items()}
