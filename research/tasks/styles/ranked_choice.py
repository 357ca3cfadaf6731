"""Multiple choice ranked by the model's own loss of each choice (no head).

GPT-1 (Sec 3.3, Fig. 1) turns RACE and Story Cloze into one sequence per choice,
`context delim answer_k`; GPT-3 (Sec 2.4) scores such choices by the LM's likelihood of each
completion given the context, normalised per token. This style does the latter after
fine-tuning: the pretrained model learns to write the right answer after its context (the
seq2seq style's rows, objectives.for_pairs), and predicts the choice whose tokens it finds
most probable, i.e. the lowest mean teacher-forced loss (T5's "rank classification",
Raffel et al. 2020, Sec 3.1.4). Any family serves: the objective writes each (context,
choice) row and computes its loss.

  python -m research.main --config=configs/ranked_choice.py:init_from=/tmp/gpt_tiny \
      --config.task.data_dir=DIR --workdir=/tmp/ranked
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from research.tasks import features
from research.tasks.styles import seq2seq


@dataclasses.dataclass
class ChoiceSplit(features.EncodedSplit):
  choice_arrays: dict | None = None  # one row per (example, choice): [N * C, ...]
  num_choices: int = 0


@functools.partial(jax.jit, static_argnames=('objective', 'model'))
def choice_losses(params, rows, *, objective, model):
  """Mean loss per target token of each row, float32 [rows] (the objective's first term)."""
  term = objective.loss_terms[0][0]

  def one(row):
    total, weight = objective.terms(model, params, jax.tree.map(lambda x: x[None], row),
                                    None)[term]
    return total / jnp.maximum(weight, 1e-9)
  return jax.vmap(one)(rows)


class RankedChoice(seq2seq.Seq2Seq):
  name = 'ranked_choice'
  generates = False  # it ranks the choices; nothing is decoded

  def __init__(self, config, task, model_cfg, tokenizer):
    pairs = {name: [dataclasses.replace(
        e, texts=(' '.join(e.texts),),
        target=None if e.label is None else e.choices[int(e.label)]) for e in examples]
        for name, examples in task.splits.items()}
    super().__init__(config, dataclasses.replace(task, splits=pairs), model_cfg, tokenizer)

  def encode(self, split, examples):
    """Training rows: context -> right choice; evaluation adds a row for every choice."""
    encoded = super().encode(split, examples)
    if split == 'train':
      return encoded
    num_choices = max((len(e.choices) for e in examples), default=1)
    each = [dataclasses.replace(e, target=e.choices[k] if k < len(e.choices) else '')
            for e in examples for k in range(num_choices)]
    choices = super().encode(split, each).arrays
    return ChoiceSplit(**vars(encoded), choice_arrays=choices, num_choices=num_choices)

  def predictions(self, params, split, outputs):
    """The index of the choice with the lowest mean loss (absent choices never win)."""
    batch_size = self.config.train.eval_batch_size
    rows = split.choice_arrays
    losses = []
    for start in range(0, len(rows['input_ids']), batch_size):
      batch = {k: v[start:start + batch_size] for k, v in rows.items()}
      losses.append(np.asarray(choice_losses(params, batch, objective=self.objective,
                                             model=self.model)))
    losses = np.concatenate(losses).reshape(len(split.examples), split.num_choices)
    present = np.array([[k < len(e.choices) for k in range(split.num_choices)]
                        for e in split.examples])
    return [int(i) for i in np.where(present, losses, np.inf).argmin(-1)]

  def baseline(self):
    return {}


Style = RankedChoice
