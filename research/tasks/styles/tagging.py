"""Token tagging (NER, POS): a head on each word's first sub-token (BERT Sec 5.3)."""
from __future__ import annotations

import numpy as np

from research.tasks import encoding, features
from research.tasks.styles import heads


def majority_baseline(task, train, dev) -> dict[str, float]:
  """Scores of tagging every word with the most frequent training tag."""
  index = {name: i for i, name in enumerate(task.labels)}
  counts = np.bincount([index[t] for e in train for t in e.tags or ()],
                       minlength=len(task.labels))
  return task.score(dev, [[int(counts.argmax())] * len(e.words) for e in dev])


class Tagging(heads.HeadStyle):
  name = 'tagging'

  def encode(self, split, examples):
    arrays, first_token = encoding.encode_tagging(examples, self.tokenizer, self.inputs,
                                                  self.max_len, labels=self.task.labels)
    return features.EncodedSplit(examples, arrays, first_token=first_token)

  def predictions(self, params, split, outputs):
    """Each word's tag index, None for words cut off by max_len (scored as wrong)."""
    index = outputs['index']  # [N, L]
    return [[int(index[n, p]) if p >= 0 else None for p in split.first_token[n, :len(e.words)]]
            for n, e in enumerate(split.examples)]

  def prediction_rows(self, split, predictions):
    """`word<TAB>tag` lines, a blank line after each sentence (CoNLL)."""
    lines = []
    for e, tags in zip(split.examples, predictions):
      lines += [f'{w}\t{"" if t is None else self.task.labels[t]}' for w, t in zip(e.words, tags)]
      lines.append('')
    return lines

  def baseline(self):
    return majority_baseline(self.task, self.task.splits['train'], self.task.splits['dev'])


Style = Tagging
