"""The loss of each fine-tuning task type, as an objective of the one train step (steps.py).

Loss terms are `{name: [total, weight]}` pairs that add across batches, micro-batches and
devices, each scaled by its weight over the whole batch before differentiating, so gradient
accumulation is exact (objectives/base.py).

Task losses: cross-entropy for classification, tagging (at first sub-tokens) and multiple
choice (softmax over the choices, BERT Sec 4.4); mean squared error for regression (STS-B);
the mean of the start and end cross-entropies for spans (BERT Sec 4.2). Decoders may add
GPT-1's auxiliary language-modelling loss on the task inputs (Sec 3.2, Eq. 5:
L3 = L2 + lambda * L1 with lambda = 0.5), which "improves generalization" and speeds convergence.
Seq2seq tasks are trained with the pretraining objectives' teacher-forced loss instead
(objectives/seq2seq.Seq2SeqLM, clm.CausalLM).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from research.objectives import base

_NEG = -1e9  # logit of impossible choices / positions (finite: no NaN for empty rows)


@dataclasses.dataclass(frozen=True)
class TaskObjective(base.Objective):
  """Static description of a fine-tuning loss (hashable: part of the jitted step)."""
  task_type: str = 'classification'
  lm_loss_weight: float = 0.0  # GPT-1's lambda; used only with a decoder

  @property
  def name(self):
    return self.task_type

  def uses_lm(self, outputs) -> bool:
    return self.lm_loss_weight > 0 and outputs['lm_logits'] is not None

  def terms(self, model, params, batch, rng):
    return _terms(self, _outputs(model, params, batch, rng), batch)

  def evaluate(self, model, params, batch):
    """(loss-term pairs, predictions) from one forward pass: class/choice/tag indices [N] or
    [N, L], regression values [N], or span start/end logits [N, L]."""
    outputs = _outputs(model, params, batch, rng=None)
    logits = masked_logits(self, outputs, batch)
    if self.task_type == 'span':
      predictions = {'start': logits['start'], 'end': logits['end']}
    elif self.task_type == 'regression':
      predictions = {'value': logits}
    else:
      predictions = {'index': jnp.argmax(logits, -1)}
    return _terms(self, outputs, batch), predictions

  def loss_scales(self, batch):
    """Each loss term's factor: 1 / its weight over the whole batch (x lambda for LM)."""
    scales = {'loss': 1.0 / jnp.maximum(jnp.sum(batch['label_weights']), 1.0)}
    if self.lm_loss_weight > 0:
      scales['lm_loss'] = self.lm_loss_weight / jnp.maximum(
          jnp.sum(batch['attention_mask'][..., 1:]), 1.0)
    return scales


def _outputs(model, params, batch, rng):
  return base.apply(model, params, batch['input_ids'], batch['segment_ids'],
                    batch['attention_mask'], rng=rng)


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
    terms = {'loss': base.pair(error * weights, weights)}
  elif objective.task_type == 'span':
    loss = (base.cross_entropy(logits['start'], batch['start_positions'])
            + base.cross_entropy(logits['end'], batch['end_positions'])) / 2
    terms = {'loss': base.pair(loss * weights, weights)}
  else:  # classification [N, C], multiple choice [N, V], tagging [N, L, C]
    correct = base.token_correct(logits, labels)  # the target's logit is the largest
    terms = {'loss': base.pair(base.cross_entropy(logits, labels) * weights, weights),
             'accuracy': base.pair(correct * weights, weights)}
  if objective.uses_lm(outputs):
    ids = batch['input_ids'].reshape(-1, batch['input_ids'].shape[-1])  # [N * V, L]
    lm_weights = batch['attention_mask'].reshape(ids.shape)[:, 1:].astype(jnp.float32)
    xent = base.cross_entropy(outputs['lm_logits'][:, :-1], ids[:, 1:])  # predict token t+1 from <= t
    terms['lm_loss'] = base.pair(xent * lm_weights, lm_weights)
  return terms
