"""An encoded split: a task style's arrays plus what maps model outputs back to examples
(SQuAD windows -> questions, sub-tokens -> words, decoding prompts); the predictions file.

The task styles (tasks/styles/) fill it and read it back."""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from research.tasks.readers import Example


@dataclasses.dataclass
class EncodedSplit:
  examples: list[Example]
  arrays: dict[str, np.ndarray]  # leading axis: features (= examples except for span windows)
  feature_example: np.ndarray | None = None  # span: [F] example of each window
  token_to_word: np.ndarray | None = None  # span: [F, L] context word of each position
  first_token: np.ndarray | None = None  # tagging: [N, W] position of each word's first piece
  words: list | None = None  # span: the context words of each example
  prompts: list | None = None  # seq2seq: what decoding starts from (framed sources / prompts)

  @property
  def num_features(self) -> int:
    return len(self.arrays['input_ids'])

  @property
  def labelled(self) -> bool:
    return any(e.label is not None or e.tags is not None or e.target is not None
               for e in self.examples)


def prediction_rows(split: EncodedSplit, predictions: list[Any]) -> list[str]:
  """Lines of a predictions file: a header `index<TAB>prediction` and one `uid<TAB>prediction`
  line per example (GLUE's submission format). Tabs and line breaks in a prediction (written
  text) become spaces, so each stays one TSV field."""
  one_field = lambda p: re.sub(r'[\t\r\n]', ' ', str(p))
  rows = [f'{e.uid}\t{one_field(p)}' for e, p in zip(split.examples, predictions)]
  return ['index\tprediction', *rows]
