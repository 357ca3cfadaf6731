"""A fine-tuning task from `config.task`: its type, label set, metrics and examples per split.

Everything is read from the config, so a new data set in a supported format needs no code:

  --config.task.format=tsv --config.task.data_dir=DIR            (DIR/train.tsv, dev.tsv[, test.tsv])
  --config.task.text_columns=question,passage --config.task.label_column=answer
  --config.task.format=glue --config.task.name=rte --config.task.data_dir=glue_data/RTE
  --config.task.format=conll --config.task.train=a.txt --config.task.dev=b.txt
  --config.task.format=squad --config.task.data_dir=DIR          (train-v1.1.json, dev-v1.1.json)
  --config.task.type=seq2seq --config.task.source_column=old --config.task.target_column=new
  --config.task.dev_fraction=0.1          (no dev file: hold out 10% of train as dev)

Task types: classification, regression, tagging, span (extractive QA), multiple_choice, seq2seq
(text -> text from a headed TSV/CSV/JSONL; scored by BLEU, chrF and exact match). The
type follows from the format where the format allows one (conll -> tagging, squad -> span,
GLUE per task); classification label names are taken from `task.labels`, else '0'..'n-1' from
`task.num_labels`, else the distinct training labels (sorted, numerically if all numbers).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import ml_collections

from research.tasks import glue, holdout, metrics as metrics_lib, readers, squad
from research.tasks.readers import Example, TaskDataError

TASK_TYPES = ('classification', 'regression', 'tagging', 'span', 'multiple_choice', 'seq2seq')
FORMATS = ('glue', 'tsv', 'csv', 'jsonl', 'conll', 'squad')
_SUFFIXES = {
    'tsv': ('.tsv',), 'csv': ('.csv',), 'jsonl': ('.jsonl', '.json'),
    'conll': ('.txt', '.conll', '.tsv', '.iob', ''), 'squad': ('-v1.1.json', '.json'),
}
_TYPE_METRICS = {
    'classification': ('accuracy',), 'regression': ('pearson', 'spearman'),
    'multiple_choice': ('accuracy',), 'span': ('f1', 'exact_match'),
    # BLEU first: T5 (Raffel et al. 2020, with SacreBLEU) and BART (Lewis et al. 2020, WMT16
    # Ro-En) report generated text as BLEU, so the headline compares with theirs; chrF stays
    # beside it (character n-grams credit near-misses like spake/spoke that BLEU counts wrong).
    'seq2seq': metrics_lib.SEQ2SEQ_METRICS,
}
_ALLOWED_METRICS = {
    'classification': tuple(metrics_lib.SEQUENCE_METRICS),
    'multiple_choice': ('accuracy',), 'regression': ('pearson', 'spearman'),
    'tagging': ('entity_f1', 'accuracy'), 'span': ('f1', 'exact_match'),
    'seq2seq': metrics_lib.SEQ2SEQ_METRICS,
}
_SEQ2SEQ_FORMATS = ('tsv', 'csv', 'jsonl')


@dataclasses.dataclass
class Task:
  name: str
  type: str  # one of TASK_TYPES
  labels: tuple[str, ...]  # class names (classification) or tags (tagging); () otherwise
  metrics: tuple[str, ...]  # the first is the headline number
  symmetric: bool  # sentence pairs without order (GPT-1 Sec 3.3 "Similarity")
  splits: dict[str, list[Example]]  # 'train', 'dev', optional 'test', 'dev_mismatched', ...
  dev_split: holdout.DevSplit | None = None  # set when dev was held out of train
  dropped: readers.DroppedRows = dataclasses.field(default_factory=readers.DroppedRows)

  @property
  def num_outputs(self) -> int:
    """Logits per prediction: classes/tags, 1 (regression, a choice's score) or 2 (start/end)."""
    if self.type in ('classification', 'tagging'):
      return len(self.labels)
    return 2 if self.type == 'span' else 1

  @property
  def positive_label(self) -> int:
    """Index of the class F1 scores: '1' when present (MRPC, QQP), else the last class."""
    return self.labels.index('1') if '1' in self.labels else len(self.labels) - 1

  def score(self, examples: Sequence[Example], predictions: Sequence) -> dict[str, float]:
    """Metrics of `predictions` (class indices, floats, choice indices, tag-index lists with
    None for unpredicted words, answer strings or output texts, by type) against the examples'
    gold."""
    if self.type == 'seq2seq':
      return {k: v for k, v in metrics_lib.seq2seq_scores(
          [e.target for e in examples], predictions).items() if k in self.metrics}
    if self.type == 'span':
      return {k: v for k, v in metrics_lib.squad_scores(
          [e.answers for e in examples], predictions).items() if k in self.metrics}
    if self.type == 'tagging':
      gold = [e.tags for e in examples]
      tags = [[None if p is None else self.labels[p] for p in row] for row in predictions]
      scores = {}
      if 'entity_f1' in self.metrics:
        scores.update(metrics_lib.entity_scores(gold, [[t or 'O' for t in row] for row in tags]))
      if 'accuracy' in self.metrics:
        scores['accuracy'] = metrics_lib.token_accuracy(gold, tags)
      return scores
    if self.type == 'regression':
      gold = [float(e.label) for e in examples]
    elif self.type == 'multiple_choice':
      gold = [int(e.label) for e in examples]
    else:  # a class absent from train gets index -1: always wrong
      index = {name: i for i, name in enumerate(self.labels)}
      gold = [index.get(str(e.label), -1) for e in examples]
    scores = {}
    for name in self.metrics:
      fn = metrics_lib.SEQUENCE_METRICS[name]
      scores[name] = (fn(gold, predictions, positive=self.positive_label) if name == 'f1'
                      else fn(gold, predictions))
    return scores


def split_list(value: str) -> tuple[str, ...]:
  """The names of a comma-separated config value ('a, b,' -> ('a', 'b'))."""
  return tuple(v.strip() for v in value.split(',') if v.strip())


def _find_files(cfg) -> dict[str, str]:
  files = {}
  for split in ('train', 'dev', 'test'):
    if cfg[split]:
      files[split] = cfg[split]
    elif cfg.data_dir:
      found = next(readers.iter_split_files(cfg.data_dir, split, _SUFFIXES[cfg.format]), None)
      if found:
        files[split] = found
  for split in ('train', 'dev'):
    if split not in files and not (split == 'dev' and cfg.dev_fraction):
      where = (f'{cfg.data_dir}/{split}{{{",".join(_SUFFIXES[cfg.format])}}}[.gz]'
               if cfg.data_dir else f'--config.task.{split}')
      fix = (' or --config.task.dev_fraction=0.1 (hold out 10% of train as dev)'
             if split == 'dev' else '')
      raise TaskDataError(f'no {split} file for task format {cfg.format!r}: looked for {where}; '
                          f'set --config.task.data_dir or --config.task.{split}=PATH{fix}')
  for path in files.values():
    if not os.path.exists(path):
      raise FileNotFoundError(f'task file {path} does not exist')
  return files


def _read_file(cfg, path: str, split: str, drops: readers.DroppedRows) -> list[Example]:
  if cfg.format == 'conll':
    return readers.read_conll(path, drops)
  if cfg.format == 'squad':
    return squad.read(path)
  rows = (readers.read_jsonl(path, drops) if cfg.format == 'jsonl'
          else readers.read_delimited(path, drops, header=cfg.header))
  if cfg.type == 'seq2seq':  # a test split may come without targets
    return readers.rows_to_seq2seq(rows, path, drops, source_column=cfg.source_column,
                                   target_column=cfg.target_column,
                                   require_target=split in ('train', 'dev'))
  return readers.rows_to_examples(
      rows, path, drops, text_columns=split_list(cfg.text_columns),
      label_column=cfg.label_column, choice_columns=split_list(cfg.choice_columns))


def _infer_labels(values) -> tuple[str, ...]:
  names = sorted({str(v) for v in values if v is not None})
  try:
    return tuple(sorted(names, key=float))
  except ValueError:
    return tuple(names)


def load_task(cfg: ml_collections.ConfigDict) -> Task:
  """Reads every split of `config.task` and resolves its type, labels and metrics."""
  if cfg.format not in FORMATS:
    raise ValueError(f'unknown --config.task.format={cfg.format!r}; use one of {FORMATS}')
  symmetric = cfg.symmetric
  drops = readers.DroppedRows(strict=cfg.strict)  # malformed rows: counted, or with strict an error
  if cfg.type == 'seq2seq' and cfg.format not in _SEQ2SEQ_FORMATS:
    raise ValueError(f'task type seq2seq reads headed {"/".join(_SEQ2SEQ_FORMATS)} files, not '
                     f'--config.task.format={cfg.format!r}')
  if cfg.format == 'glue':
    spec = glue.get(cfg.name)
    splits = glue.read_splits(spec, cfg.data_dir, drops)
    task_type = 'regression' if not spec.labels else 'classification'
    labels, default_metrics, symmetric = spec.labels, spec.metrics, symmetric or spec.symmetric
  else:
    splits = {split: _read_file(cfg, path, split, drops)
              for split, path in _find_files(cfg).items()}
    task_type = cfg.type or {'conll': 'tagging', 'squad': 'span'}.get(cfg.format,
                                                                        'classification')
    labels, default_metrics = (), _TYPE_METRICS.get(task_type)
    if task_type == 'classification':
      labels = (split_list(cfg.labels) or tuple(map(str, range(cfg.num_labels)))
                or _infer_labels(e.label for e in splits['train']))
    elif task_type == 'tagging':
      labels = split_list(cfg.labels) or _infer_labels(
          t for e in splits['train'] for t in e.tags or ())
      default_metrics = ('entity_f1',) if metrics_lib.is_bio(labels) else ('accuracy',)
  if task_type not in TASK_TYPES:
    raise ValueError(f'unknown --config.task.type={task_type!r}; use one of {TASK_TYPES}')
  if task_type == 'multiple_choice' and not cfg.choice_columns:
    raise ValueError('multiple_choice needs --config.task.choice_columns (the columns, or one '
                     'list-valued JSON key, holding the candidate answers)')
  if task_type in ('classification', 'tagging') and len(labels) < 2:
    raise TaskDataError(f'task {cfg.name or cfg.format!r} has labels {labels}: need at least '
                        'two classes; check --config.task.label_column or set task.labels')
  unknown = {str(e.label) for e in splits['train'] if e.label is not None} - set(labels)
  if task_type == 'classification' and unknown:
    raise TaskDataError(f'training labels {sorted(unknown)} are not in --config.task.labels='
                        f'{",".join(labels)}')
  dev_split = None
  if cfg.dev_fraction:  # labels were resolved from the whole of train, before the split
    if 'dev' in splits:
      raise TaskDataError('the task has a dev split; --config.task.dev_fraction holds one out '
                          'of train only when there is none: set it to 0')
    stratify = task_type in ('classification', 'multiple_choice')
    examples = splits.pop('train')
    train, dev, dev_split = holdout.hold_out(
        examples, cfg.dev_fraction, cfg.dev_seed,
        labels=[e.label for e in examples] if stratify else None)
    splits = {'train': train, 'dev': dev, **splits}
  task_metrics = split_list(cfg.metrics) or default_metrics
  bad = [m for m in task_metrics if m not in _ALLOWED_METRICS[task_type]]
  if bad:
    raise ValueError(f'metrics {bad} do not apply to {task_type}; choose from '
                     f'{_ALLOWED_METRICS[task_type]} (--config.task.metrics)')
  if cfg.train_limit:
    splits['train'] = splits['train'][:cfg.train_limit]
  if cfg.eval_limit:
    splits = {k: v if k == 'train' else v[:cfg.eval_limit] for k, v in splits.items()}
  return Task(cfg.name or cfg.format, task_type, labels, task_metrics, symmetric, splits,
              dev_split, drops)
