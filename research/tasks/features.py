"""Task splits -> model-ready arrays, and model outputs -> per-example predictions.

`encode_split` turns one split's examples into the arrays of encoding.py / squad.py plus what
is needed to map outputs back (SQuAD windows -> questions, sub-tokens -> words);
`to_predictions` does that mapping, giving what `Task.score` and the predictions files take.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from research.tasks import encoding, seq2seq, squad
from research.tasks.readers import Example
from research.tasks.task import Task


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


def encode_split(task: Task, examples: list[Example], tokenizer, style: encoding.InputStyle,
                 max_len: int, task_cfg) -> EncodedSplit:
  if task.type == 'tagging':
    arrays, first_token = encoding.encode_tagging(examples, tokenizer, style, max_len,
                                                  labels=task.labels)
    return EncodedSplit(examples, arrays, first_token=first_token)
  if task.type == 'span':
    arrays, feature_example, token_to_word, words = squad.encode(
        examples, tokenizer, style, max_len, doc_stride=task_cfg.doc_stride,
        max_query_len=task_cfg.max_query_len)
    return EncodedSplit(examples, arrays, feature_example, token_to_word, words=words)
  arrays = encoding.encode_sequences(
      examples, tokenizer, style, max_len, task_type=task.type, labels=task.labels,
      both_orders=task.symmetric and style.name == 'gpt')
  return EncodedSplit(examples, arrays)


def encode_seq2seq_split(examples: list[Example], tokenizer, style, max_len: int,
                         target_len: int) -> EncodedSplit:
  """Seq2seq (and text-to-text) examples: arrays for teacher forcing, prompts for decoding."""
  arrays, prompts = seq2seq.encode_seq2seq(examples, tokenizer, style, max_len, target_len)
  return EncodedSplit(examples, arrays, prompts=prompts)


def to_predictions(task: Task, split: EncodedSplit, outputs: dict[str, np.ndarray],
                   task_cfg) -> list[Any]:
  """Per-example predictions from eval_step outputs concatenated over the split's features."""
  if task.type == 'span':
    return squad.best_spans(outputs['start'], outputs['end'], split.feature_example,
                            split.token_to_word, split.words,
                            max_answer_len=task_cfg.max_answer_len)
  if task.type == 'tagging':
    index = outputs['index']  # [N, L]
    return [[int(index[n, p]) if p >= 0 else None for p in split.first_token[n, :len(e.words)]]
            for n, e in enumerate(split.examples)]
  if task.type == 'regression':
    return [float(v) for v in outputs['value']]
  return [int(i) for i in outputs['index']]


def prediction_rows(task: Task, split: EncodedSplit, predictions: list[Any]) -> list[str]:
  """Lines of a predictions file: a header `index<TAB>prediction` and one `uid<TAB>prediction`
  line per example (GLUE's submission format), or `word<TAB>tag` sentences for tagging.
  Seq2seq outputs have tabs and line breaks replaced by spaces, so each stays one TSV field;
  a text-to-text classifier that wrote no label word (class -1) gets an empty prediction."""
  if task.type == 'tagging':
    lines = []
    for e, tags in zip(split.examples, predictions):
      lines += [f'{w}\t{"" if t is None else task.labels[t]}' for w, t in zip(e.words, tags)]
      lines.append('')
    return lines
  if task.type == 'classification':
    predictions = [task.labels[p] if p >= 0 else '' for p in predictions]
  if task.type == 'seq2seq':
    predictions = [re.sub(r'[\t\r\n]', ' ', p) for p in predictions]
  rows = [f'{e.uid}\t{p}' for e, p in zip(split.examples, predictions)]
  return ['index\tprediction', *rows]


def majority_baseline(task: Task, train: list[Example], dev: list[Example]) -> dict[str, float]:
  """Scores of the trivial prediction a fine-tuned model must beat: the most frequent training
  class or tag, or (seq2seq) the source text copied unchanged; empty for regression, spans and
  multiple choice."""
  if task.type == 'classification':
    index = {name: i for i, name in enumerate(task.labels)}
    counts = np.bincount([index[str(e.label)] for e in train if e.label is not None],
                         minlength=len(task.labels))
    return task.score(dev, [int(counts.argmax())] * len(dev))
  if task.type == 'tagging':
    index = {name: i for i, name in enumerate(task.labels)}
    counts = np.bincount([index[t] for e in train for t in e.tags or ()],
                         minlength=len(task.labels))
    return task.score(dev, [[int(counts.argmax())] * len(e.words) for e in dev])
  if task.type == 'seq2seq':
    return task.score(dev, [e.texts[0] for e in dev])
  return {}
