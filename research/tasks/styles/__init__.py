"""Task styles: how a task becomes batches, loss terms, predictions and scores.

A style is one object with one interface (`base.TaskStyle`); fine-tuning (research/finetune.py)
is a loop around it. The task config chooses it: `task.style` names a module of this package
(each defines `Style`), else the task's type does (`DEFAULTS`), classification becoming
`text_to_text` with `finetune.text_to_text` (T5 Sec 2.4). Adding a style is a new module here
and a config that names it (ranked_choice.py is such an example).

  classification   a head on the sequence: classes, regression, choices (BERT Sec 4.1/4.4,
                   GPT-1 Sec 3.3)
  tagging          a head on each word's first sub-token (BERT Sec 5.3)
  span             start/end logits over the context (BERT Sec 4.2)
  seq2seq          the pretrained model writes the target (T5 Sec 2.4, BART Sec 3.4, UniLM
                   Sec 2.4)
  text_to_text     classification written as label words (T5 Sec 2.4)
"""
from __future__ import annotations

import importlib
import pkgutil

from research.tasks.styles.base import TaskStyle

# The style each task type gets unless task.style names another.
DEFAULTS = {'classification': 'classification', 'regression': 'classification',
            'multiple_choice': 'classification', 'tagging': 'tagging', 'span': 'span',
            'seq2seq': 'seq2seq'}


def available() -> list[str]:
  """The modules of this package that define a `Style`."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__)
                if hasattr(importlib.import_module(f'{__name__}.{m.name}'), 'Style'))


def name_of(config, task) -> str:
  """The style `config` asks for `task`: task.style, else the type's (or text_to_text)."""
  if config.task.get('style'):
    return config.task.style
  if config.finetune.text_to_text and task.type == 'classification':
    return 'text_to_text'
  return DEFAULTS[task.type]


def create(config, task, model_cfg, tokenizer) -> TaskStyle:
  """The style object of `task` for a model of `model_cfg` read through `tokenizer`."""
  name = name_of(config, task)
  if name not in available():
    raise ValueError(f'unknown --config.task.style={name!r}; use one of {available()}')
  module = importlib.import_module(f'{__name__}.{name}')
  return module.Style(config, task, model_cfg, tokenizer)
