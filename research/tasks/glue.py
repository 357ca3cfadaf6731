"""The nine GLUE tasks (Wang et al. 2019) as the official download lays them out.

Point `--config.task.data_dir` at one task's directory of the `download_glue_data.py` layout
(e.g. glue_data/MRPC) and set `--config.task.format=glue --config.task.name=mrpc`. Columns are
read by header name, so extra or reordered columns do not matter; CoLA's train/dev files have
no header and get the column names below. Metrics are those of GLUE's Table 1 (first = the
headline). Test files carry no labels: fine-tuning writes predictions for them instead.
"""
from __future__ import annotations

import dataclasses
import os

from research.tasks import readers


@dataclasses.dataclass(frozen=True)
class GlueTask:
  text_columns: tuple[str, ...]
  label_column: str
  labels: tuple[str, ...]  # () = regression
  metrics: tuple[str, ...]
  # split name -> file name. 'dev' and 'test' are the matched sets for MNLI.
  files: tuple[tuple[str, str], ...] = (('train', 'train.tsv'), ('dev', 'dev.tsv'),
                                        ('test', 'test.tsv'))
  # Names for the columns of a file without a header (detected by the first row not naming
  # the text columns): CoLA's train and dev.
  headerless_columns: tuple[str, ...] = ()
  # Pairs without an order (similarity): decoders read both orders (GPT-1 Sec 3.3).
  symmetric: bool = False


_BINARY = ('0', '1')
_NLI2 = ('entailment', 'not_entailment')

TASKS = {
    'cola': GlueTask(('sentence',), 'label', _BINARY, ('mcc',),
                     headerless_columns=('source', 'label', 'original_label', 'sentence')),
    'sst2': GlueTask(('sentence',), 'label', _BINARY, ('accuracy',)),
    'mrpc': GlueTask(('#1 String', '#2 String'), 'Quality', _BINARY, ('f1', 'accuracy'),
                     symmetric=True),
    'stsb': GlueTask(('sentence1', 'sentence2'), 'score', (), ('pearson', 'spearman'),
                     symmetric=True),
    'qqp': GlueTask(('question1', 'question2'), 'is_duplicate', _BINARY, ('accuracy', 'f1'),
                    symmetric=True),
    'mnli': GlueTask(('sentence1', 'sentence2'), 'gold_label',
                     ('contradiction', 'entailment', 'neutral'), ('accuracy',),
                     files=(('train', 'train.tsv'), ('dev', 'dev_matched.tsv'),
                            ('dev_mismatched', 'dev_mismatched.tsv'),
                            ('test', 'test_matched.tsv'),
                            ('test_mismatched', 'test_mismatched.tsv'))),
    'qnli': GlueTask(('question', 'sentence'), 'label', _NLI2, ('accuracy',)),
    'rte': GlueTask(('sentence1', 'sentence2'), 'label', _NLI2, ('accuracy',)),
    'wnli': GlueTask(('sentence1', 'sentence2'), 'label', _BINARY, ('accuracy',)),
}
# The names GLUE's own directories and papers use.
ALIASES = {'sst-2': 'sst2', 'sts-b': 'stsb', 'mnli-m': 'mnli'}


def get(name: str) -> GlueTask:
  key = ALIASES.get(name.lower(), name.lower())
  if key not in TASKS:
    raise readers.TaskDataError(f'unknown GLUE task {name!r}; --config.task.name must be one '
                                f'of {", ".join(TASKS)} with --config.task.format=glue')
  return TASKS[key]


def read_split(task: GlueTask, path: str, drops: readers.DroppedRows) -> list[readers.Example]:
  with readers.open_text(path) as f:
    first = f.readline().rstrip('\r\n').split('\t')
  has_header = not task.headerless_columns or all(c in first for c in task.text_columns)
  rows = readers.read_delimited(path, drops, header=has_header,
                                names=() if has_header else task.headerless_columns)
  # Test files number their rows in an `index` (QQP: `id`) column, which submissions echo.
  uid_column = 'index' if rows and 'index' in rows[0] else 'id'
  return readers.rows_to_examples(rows, path, drops, text_columns=task.text_columns,
                                  label_column=task.label_column, uid_column=uid_column)


def read_splits(task: GlueTask, data_dir: str,
                drops: readers.DroppedRows) -> dict[str, list[readers.Example]]:
  """Every split file present in `data_dir` (train and dev are required); malformed rows are
  counted in `drops`."""
  splits = {}
  for split, filename in task.files:
    path = os.path.join(data_dir, filename)
    for candidate in (path, path + '.gz'):
      if os.path.exists(candidate):
        splits[split] = read_split(task, candidate, drops)
        break
  missing = [s for s in ('train', 'dev') if s not in splits]
  if missing:
    expected = dict(task.files)
    raise readers.TaskDataError(
        f'{data_dir}: no {" or ".join(expected[s] for s in missing)}; point '
        '--config.task.data_dir at the task\'s directory of the GLUE download')
  return splits
