"""Sequence-level heads: classification, regression and multiple choice.

BERT (Sec 4.1) classifies the [CLS] state, GPT-1 (Sec 3.3) the extract token's; pairs without
order are read both ways by a decoder and the two states added (GPT-1 "Similarity"); multiple
choice scores each `context + choice_k` and takes a softmax over the choices (BERT Sec 4.4,
GPT-1 "Question Answering"). Regression (STS-B) is one output under a squared error.
"""
from __future__ import annotations

import numpy as np

from research.tasks import encoding, features
from research.tasks.styles import heads


def majority_baseline(task, train, dev) -> dict[str, float]:
  """Scores of always predicting the most frequent training class."""
  index = {name: i for i, name in enumerate(task.labels)}
  counts = np.bincount([index[str(e.label)] for e in train if e.label is not None],
                       minlength=len(task.labels))
  return task.score(dev, [int(counts.argmax())] * len(dev))


class Classification(heads.HeadStyle):
  name = 'classification'

  def encode(self, split, examples):
    arrays = encoding.encode_sequences(
        examples, self.tokenizer, self.inputs, self.max_len, task_type=self.task.type,
        labels=self.task.labels,
        both_orders=self.task.symmetric and self.inputs.reads_pairs_both_orders)
    return features.EncodedSplit(examples, arrays)

  def predictions(self, params, split, outputs):
    if self.task.type == 'regression':
      return [float(v) for v in outputs['value']]
    return [int(i) for i in outputs['index']]

  def prediction_rows(self, split, predictions):
    if self.task.type == 'classification':  # class names; '' for no class (-1)
      predictions = [self.task.labels[p] if p >= 0 else '' for p in predictions]
    return super().prediction_rows(split, predictions)

  def baseline(self):
    if self.task.type != 'classification':
      return {}
    return majority_baseline(self.task, self.task.splits['train'], self.task.splits['dev'])


Style = Classification
