"""Pure fine-tuning train/eval steps and the loss of each task type.

As in research/steps.py, loss terms are `{name: [total, weight]}` pairs that add across
batches, micro-batches and devices, and each term is normalised by its weight over the whole
batch before differentiating, so gradient accumulation is exact.

Task losses: cross-entropy for classification, tagging (at first sub-tokens) and multiple
choice (softmax over the choices, BERT Sec 4.4); mean squared error for regression (STS-B);
the mean of the start and end cross-entropies for spans (BERT Sec 4.2). Decoders may add
GPT-1's auxiliary language-modelling loss on the task inputs (Sec 3.2, Eq. 5:
L3 = L2 + lambda * L1 with lambda = 0.5), which "improves generalization" and speeds convergence.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from research import steps
from research.state import TrainState

_NEG = -1e9  # logit of impossible choices / positions (finite: no NaN for empty rows)


@dataclasses.dataclass(frozen=True)
class TaskObjective:
  """Static description of a fine-tuning loss (hashable: part of the jitted step)."""
  task_type: str
  lm_loss_weight: float = 0.0  # GPT-1's lambda; used only with a decoder

  def uses_lm(self, outputs) -> bool:
    return self.lm_loss_weight > 0 and outputs['lm_logits'] is not None


def _pair(total, weight) -> jax.Array:
  return jnp.stack([jnp.sum(total), jnp.sum(weight)]).astype(jnp.float32)


def _xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def _outputs(model: nn.Module, params, batch, rng):
  deterministic = rng is None
  return model.apply({'params': params}, batch['input_ids'], batch['segment_ids'],
                     batch['attention_mask'], deterministic=deterministic,
                     rngs=None if deterministic else {'dropout': rng})


def masked_logits(objective: TaskObjective, outputs, batch):
  """Logits with impossible outcomes (absent choices, padding positions) pushed to -1e9."""
  logits = outputs['logits']
  if objective.task_type == 'multiple_choice':
    return jnp.where(batch['choice_mask'] > 0, logits, _NEG)
  if objective.task_type == 'span':
    valid = batch['attention_mask'] > 0
    return {k: jnp.where(valid, v, _NEG) for k, v in logits.items()}
  return logits


def _terms(objective: TaskObjective, outputs, batch) -> dict[str, jax.Array]:
  labels, weights = batch.get('labels'), batch['label_weights']
  logits = masked_logits(objective, outputs, batch)
  if objective.task_type == 'regression':
    error = jnp.square(logits.astype(jnp.float32) - labels)
    terms = {'loss': _pair(error * weights, weights)}
  elif objective.task_type == 'span':
    loss = (_xent(logits['start'], batch['start_positions'])
            + _xent(logits['end'], batch['end_positions'])) / 2
    terms = {'loss': _pair(loss * weights, weights)}
  else:  # classification [N, C], multiple choice [N, V], tagging [N, L, C]
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    terms = {'loss': _pair(_xent(logits, labels) * weights, weights),
             'accuracy': _pair(correct * weights, weights)}
  if objective.uses_lm(outputs):
    ids = batch['input_ids'].reshape(-1, batch['input_ids'].shape[-1])  # [N * V, L]
    lm_weights = batch['attention_mask'].reshape(ids.shape)[:, 1:].astype(jnp.float32)
    xent = _xent(outputs['lm_logits'][:, :-1], ids[:, 1:])  # predict token t+1 from <= t
    terms['lm_loss'] = _pair(xent * lm_weights, lm_weights)
  return terms


def _normalizers(objective: TaskObjective, batch) -> dict[str, jax.Array]:
  """Each loss term's weight over the whole batch (so micro-batch gradients add up exactly)."""
  norms = {'loss': jnp.maximum(jnp.sum(batch['label_weights']), 1.0)}
  if objective.lm_loss_weight > 0:
    norms['lm_loss'] = jnp.maximum(jnp.sum(batch['attention_mask'][..., 1:]), 1.0)
  return norms


def means(terms: dict[str, jax.Array]) -> dict[str, jax.Array]:
  return {k: v[0] / jnp.maximum(v[1], 1e-9) for k, v in terms.items()}


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module,
               objective: TaskObjective, tx: optax.GradientTransformation,
               grad_accum_steps: int = 1) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update; the batch may be split into `grad_accum_steps` micro-batches."""
  norms = _normalizers(objective, batch)
  step_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params, micro, rng):
    terms = _terms(objective, _outputs(model, params, micro, rng), micro)
    loss = terms['loss'][0] / norms['loss']
    if 'lm_loss' in terms:
      loss += objective.lm_loss_weight * terms['lm_loss'][0] / norms['lm_loss']
    return loss, terms

  grads, terms = steps.accumulate_gradients(loss_fn, state.params, batch, step_rng,
                                            grad_accum_steps)

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = means(terms)
  metrics['grad_norm'] = optax.tree.norm(grads)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return steps.skip_if_nonfinite(state, new_state, metrics)


def eval_step(params, batch: dict[str, jax.Array], *, model: nn.Module,
              objective: TaskObjective) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """(loss-term pairs, predictions): class/choice/tag indices [N] or [N, L], regression
  values [N], or span start/end logits [N, L]."""
  outputs = _outputs(model, params, batch, rng=None)
  logits = masked_logits(objective, outputs, batch)
  if objective.task_type == 'span':
    predictions = {'start': logits['start'], 'end': logits['end']}
  elif objective.task_type == 'regression':
    predictions = {'value': logits}
  else:
    predictions = {'index': jnp.argmax(logits, -1)}
  return _terms(objective, outputs, batch), predictions
