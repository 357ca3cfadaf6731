"""File formats of fine-tuning data -> `Example`s, independent of any model or tokenizer.

  delimited (.tsv, .csv): a header row names the columns (or, with header=False, columns are
      0-based indices); TSV is read without quoting, as GLUE and ../shared/data write it, CSV
      with standard double-quote quoting.
  JSONL: one object per line; columns are its top-level keys (a choice column may hold a list).
  CoNLL: one `token<TAB>tag` per line (or whitespace-separated columns with the tag last, as
      CoNLL-2003), a blank line between sentences; `-DOCSTART-` lines are skipped.
Any of them may be gzip-compressed (`.gz`). Files are UTF-8 (a byte-order mark and '\r\n' line
ends are fine); anything else is an error naming the file and line (data/text_files.py).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from research.data import text_files

csv.field_size_limit(1 << 30)  # long passages (e.g. QNLI contexts) exceed the 128 KiB default


class TaskDataError(ValueError):
  """Fine-tuning data that cannot be read as configured; the message names the file and fix."""


@dataclasses.dataclass(frozen=True)
class Example:
  """One instance of any task type; fields a type does not use stay empty.

  texts: classification/regression: 1 or 2 segments; multiple choice: the shared context
    segments (may be empty); span: (question, context).
  label: class name (str), float target (regression), int choice index (multiple choice);
    None when the split is unlabelled (GLUE test sets).
  words, tags: tagging (tags None when unlabelled).
  choices: multiple choice candidates.
  answers, answer_start: span QA gold answer texts, and the character offset of the first in
    the context (-1 if unknown).
  target: seq2seq output text (the input is `texts[0]`); None when the split is unlabelled.
  uid: the id a predictions file reports (GLUE `index`, SQuAD `id`; else the row number).
  """
  texts: tuple[str, ...] = ()
  label: Any = None
  words: tuple[str, ...] = ()
  tags: tuple[str, ...] | None = None
  choices: tuple[str, ...] = ()
  answers: tuple[str, ...] = ()
  answer_start: int = -1
  target: str | None = None
  uid: str = ''


def open_text(path: str) -> text_files.TextLines:
  """UTF-8 lines with their line ends (csv needs them); bytes that are not UTF-8 are an error
  naming the file and line; a byte-order mark is dropped."""
  return text_files.TextLines(path)


def read_delimited(path: str, *, header: bool = True,
                   names: Sequence[str] = ()) -> list[dict[str, str]]:
  """Rows of a TSV/CSV file as dicts keyed by column name.

  Column names come from the header row; with header=False, from `names` if given, else the
  0-based column index as a string ('0', '1', ...). Rows with fewer fields than the header
  are dropped (GLUE's QQP train file has a few such broken lines; HF's processors skip them).
  """
  tsv = '.tsv' in os.path.basename(path)
  with open_text(path) as f:
    reader = (csv.reader(f, delimiter='\t', quoting=csv.QUOTE_NONE) if tsv else csv.reader(f))
    rows = [row for row in reader if row]
  if not rows:
    return []
  if header:
    columns, rows = rows[0], rows[1:]
  else:
    columns = list(names) or [str(i) for i in range(max(len(r) for r in rows))]
  return [dict(zip(columns, row)) for row in rows if len(row) >= len(columns)]


def read_jsonl(path: str) -> list[dict[str, Any]]:
  records = []
  with open_text(path) as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise TaskDataError(f'{path}:{number}: not JSON ({e.msg}); a .jsonl file holds one '
                            'object per line') from None
  return records


def read_conll(path: str) -> list[Example]:
  """Sentences of `token<TAB>tag` lines (tag = last column), blank-line separated."""
  examples, words, tags = [], [], []

  def flush():
    if words:
      examples.append(Example(words=tuple(words), tags=tuple(tags), uid=str(len(examples))))
      words.clear()
      tags.clear()

  with open_text(path) as f:
    for number, line in enumerate(f, start=1):
      line = line.rstrip('\r\n')
      if not line.strip():
        flush()
        continue
      fields = line.split('\t') if '\t' in line else line.split()
      if fields[0] == '-DOCSTART-':
        continue
      if len(fields) < 2:
        raise TaskDataError(f'{path}:{number}: expected "token<TAB>tag", got {line!r}')
      words.append(fields[0])
      tags.append(fields[-1])
  flush()
  return examples


def _column(row: dict[str, Any], name: str, path: str) -> Any:
  if name not in row:
    raise TaskDataError(f'{path}: no column {name!r} (columns: {", ".join(map(str, row))}); '
                        'set --config.task.text_columns / label_column / choice_columns to '
                        'the names in its header (or indices with --config.task.header=False)')
  return row[name]


def rows_to_examples(rows: Sequence[dict[str, Any]], path: str, *, text_columns: Sequence[str],
                     label_column: str, choice_columns: Sequence[str] = (),
                     uid_column: str = '') -> list[Example]:
  """Sequence or multiple-choice examples from rows; a split without the label column (a test
  set) gets label None. An empty text column is allowed only in multiple choice."""
  if not rows:
    return []
  labelled = bool(label_column) and label_column in rows[0]
  examples = []
  for i, row in enumerate(rows):
    texts = tuple(str(_column(row, c, path)) for c in text_columns)
    choices = ()
    if choice_columns:
      values = [_column(row, c, path) for c in choice_columns]
      # One JSON column may hold the whole list of choices.
      choices = tuple(map(str, values[0] if len(values) == 1 and isinstance(values[0], list)
                          else values))
    uid = str(row[uid_column]) if uid_column and uid_column in row else str(i)
    examples.append(Example(texts=texts, label=row[label_column] if labelled else None,
                            choices=choices, uid=uid))
  return examples


def rows_to_seq2seq(rows: Sequence[dict[str, Any]], path: str, *, source_column: str,
                    target_column: str, require_target: bool) -> list[Example]:
  """Source -> target examples (`texts=(source,)`, `target`) from headed rows.

  A file with the target column is labelled: every row needs a non-empty source and target.
  Without it (allowed unless `require_target`, i.e. for an unlabelled test set) targets are
  None. Rows are numbered from 1 as read (the header and blank lines are not counted).
  """
  if not rows:
    raise TaskDataError(f'{path} holds no examples (empty, or a header only); a seq2seq file '
                        f'needs a header naming {source_column!r} and {target_column!r} and '
                        'one example per row')
  columns = list(rows[0])
  required = [source_column, target_column] if require_target else [source_column]
  missing = [c for c in required if c not in columns]
  if missing:
    raise TaskDataError(f'{path}: no column {missing[0]!r} (columns: '
                        f'{", ".join(map(str, columns))}); set --config.task.source_column / '
                        'target_column to the names in its header')
  labelled = target_column in columns
  names = [source_column, target_column] if labelled else [source_column]
  examples = []
  for number, row in enumerate(rows, start=1):
    texts = {c: row.get(c) for c in names}  # a JSONL record may lack a key: None
    for column, text in texts.items():
      if text is None or not str(text).strip():
        raise TaskDataError(f'{path}: row {number} has an empty {column!r}; every example '
                            'needs a source and a target text: fill it in or drop the row')
    target = str(texts[target_column]) if labelled else None
    examples.append(Example(texts=(str(texts[source_column]),), target=target,
                            uid=str(number - 1)))
  return examples


def iter_split_files(data_dir: str, split: str, suffixes: Sequence[str]) -> Iterator[str]:
  """`<data_dir>/<split><suffix>[.gz]` candidates that exist."""
  for suffix in suffixes:
    for name in (split + suffix, split + suffix + '.gz'):
      path = os.path.join(data_dir, name)
      if os.path.exists(path):
        yield path
