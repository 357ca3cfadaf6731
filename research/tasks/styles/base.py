"""The interface every task style implements (styles/__init__.py chooses one per task).

A style is built from the resolved config, the task, the model's config and its tokenizer;
it owns the model it trains (a task head, or the pretraining model itself) and the objective
whose loss terms the one train step (research/steps.py) optimises. Fine-tuning asks it, in
order: `encode` each split, `init_params` / `pretrained` for the weights, `corruptor` for
per-epoch noise of training rows, and per evaluation `predictions` (from the eval step's
per-row outputs, or by decoding), `loss_metrics`, `score`, `prediction_rows`; `baseline` and
`flops_per_example` feed the log.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import numpy as np

from research.tasks import features
from research.tasks.readers import Example


class TaskStyle:
  name: ClassVar[str] = ''
  # The model writes text that is decoded and scored (else a head reads the model's states).
  generates: ClassVar[bool] = False

  def __init__(self, config, task, model_cfg, tokenizer):
    self.config, self.task, self.model_cfg, self.tokenizer = config, task, model_cfg, tokenizer
    self.max_len = config.data.max_seq_len
    self.model: Any = None  # set by each style
    self.objective: Any = None

  def encode(self, split: str, examples: list[Example]) -> features.EncodedSplit:
    """Arrays of the objective's batch keys for one split, and what maps outputs back."""
    raise NotImplementedError

  def init_params(self, train: features.EncodedSplit) -> Callable:
    """rng -> boxed params of `self.model` at the shapes of the training arrays."""
    raise NotImplementedError

  def pretrained(self, loaded) -> tuple[str | None, Any]:
    """(subtree name or None for the whole tree, params) of a loading.Loaded that start
    the model; the rest of it starts from random weights."""
    raise NotImplementedError

  def corruptor(self) -> Callable[[dict, np.random.Generator], dict] | None:
    """(row, rng) -> the training row with this epoch's noise, or None."""
    return None

  def predictions(self, params, split: features.EncodedSplit,
                  outputs: dict[str, np.ndarray]) -> list:
    """Per-example predictions (what `score` takes) from the eval step's per-row outputs
    concatenated over the split, or by decoding with params."""
    raise NotImplementedError

  def loss_metrics(self, means: dict[str, float]) -> dict[str, float]:
    """Metrics of the teacher-forced loss terms' means over a split."""
    return self.objective.summarize(means)

  def score(self, examples: list[Example], predictions: list) -> dict[str, float]:
    return self.task.score(examples, predictions)

  def prediction_rows(self, split: features.EncodedSplit, predictions: list) -> list[str]:
    """Lines of the split's predictions file (GLUE's submission format by default)."""
    return features.prediction_rows(split, predictions)

  def baseline(self) -> dict[str, float]:
    """Dev scores of the trivial prediction the model must beat (empty: none)."""
    return {}

  def flops_per_example(self, arrays: dict[str, np.ndarray]) -> float:
    """Model FLOPs of one training example (forward and backward)."""
    raise NotImplementedError
