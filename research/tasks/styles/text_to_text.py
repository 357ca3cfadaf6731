"""Classification as text to text (Raffel et al. 2020, Sec 2.4 and Appendix D): the source is
"name1: text1 name2: text2", the target the label's word; the decoded word is mapped back to
its class (anything else is wrong) and scored as classification."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from research.tasks.readers import Example
from research.tasks.styles import classification, seq2seq
from research.tasks.task import split_list


def as_text_to_text(examples: Sequence[Example], label_words: Sequence[str],
                    labels: Sequence[str], names: Sequence[str]) -> list[Example]:
  """T5's text-to-text form of classification examples."""
  word = dict(zip(labels, label_words))
  out = []
  for e in examples:
    source = ' '.join(f'{name}: {text}' for name, text in zip(names, e.texts))
    target = None if e.label is None else word.get(str(e.label))
    out.append(dataclasses.replace(e, texts=(source,), target=target))
  return out


def label_of(text: str, label_words: Sequence[str]) -> int:
  """The class whose word the model wrote (exact match after stripping), else -1 (wrong)."""
  text = text.strip()
  return next((i for i, w in enumerate(label_words) if w == text), -1)


class TextToText(seq2seq.Seq2Seq):
  name = 'text_to_text'

  def __init__(self, config, task, model_cfg, tokenizer):
    self.label_words = split_list(config.finetune.label_words) or task.labels
    if len(self.label_words) != len(task.labels):
      raise ValueError(f'--config.finetune.label_words has {len(self.label_words)} words for '
                       f'{len(task.labels)} classes {task.labels}; give one word per class')
    names = split_list(config.task.text_columns)
    task = dataclasses.replace(task, splits={
        name: as_text_to_text(examples, self.label_words, task.labels, names)
        for name, examples in task.splits.items()})
    super().__init__(config, task, model_cfg, tokenizer)
    self._check_label_words()

  def _check_label_words(self):
    """Refuses a label word longer than the target: it would be cut, and a model trained on
    the cut word never writes the whole word that label_of matches."""
    for word in self.label_words:
      length = self.objective.target_tokens(self.tokenizer, self.tokenizer.encode(word))
      if length > self.target_len:
        raise ValueError(
            f'label word {word!r} is {length} target tokens with its end token, more than the '
            f'target length {self.target_len}, so it would be cut and never match; raise '
            '--config.task.max_target_len or give shorter --config.finetune.label_words')

  def predictions(self, params, split, outputs):
    """The class whose word the model wrote, -1 for none."""
    return [label_of(t, self.label_words) for t in super().predictions(params, split, outputs)]

  def prediction_rows(self, split, predictions):
    predictions = [self.task.labels[p] if p >= 0 else '' for p in predictions]
    return super().prediction_rows(split, predictions)

  def baseline(self):
    return classification.majority_baseline(self.task, self.task.splits['train'],
                                            self.task.splits['dev'])


Style = TextToText
