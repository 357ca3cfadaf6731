"""Extractive QA (SQuAD v1.1): start and end logits over the context windows (BERT Sec 4.2;
the windows and the answer search are tasks/squad.py's)."""
from __future__ import annotations

from research.tasks import features, squad
from research.tasks.styles import heads


def to_predictions(split: features.EncodedSplit, outputs, max_answer_len: int) -> list[str]:
  """The best answer text of each question over all of its windows."""
  return squad.best_spans(outputs['start'], outputs['end'], split.feature_example,
                          split.token_to_word, split.words, max_answer_len=max_answer_len)


class SpanExtraction(heads.HeadStyle):
  name = 'span'

  def encode(self, split, examples):
    task_cfg = self.config.task
    arrays, feature_example, token_to_word, words = squad.encode(
        examples, self.tokenizer, self.inputs, self.max_len, doc_stride=task_cfg.doc_stride,
        max_query_len=task_cfg.max_query_len)
    return features.EncodedSplit(examples, arrays, feature_example, token_to_word, words=words)

  def predictions(self, params, split, outputs):
    return to_predictions(split, outputs, self.config.task.max_answer_len)


Style = SpanExtraction
