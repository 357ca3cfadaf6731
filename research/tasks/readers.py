"""File formats of fine-tuning data -> `Example`s, independent of any model or tokenizer.

  delimited (.tsv, .csv): a header row names the columns (or, with header=False, columns are
      0-based indices); TSV is read without quoting, as GLUE and ../shared/data write it, CSV
      with standard double-quote quoting.
  JSONL: one object per line; columns are its top-level keys (a choice column may hold a list).
  CoNLL: one `token<TAB>tag` per line (or whitespace-separated columns with the tag last, as
      CoNLL-2003), a blank line between sentences; `-DOCSTART-` lines are skipped.
Any of them may be gzip-compressed (`.gz`). Files are UTF-8 (a byte-order mark and '\r\n' line
ends are fine); anything else is an error naming the file and line (data/text_files.py), as is
a JSONL line that is not JSON: the file is damaged, not one row of it.

Rows the format parses but a task cannot use as they are (a TSV row with fewer fields than
its header, or more; a JSONL record missing a column; an empty text; a CoNLL line without a
tag) are dropped, or repaired, and counted in `DroppedRows` with their `file:line`: the run
prints the counts once and records them in its start event. `DroppedRows(strict=True)`
(--config.task.strict=True) makes the first such row an error naming its `file:line`.
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


class Row(dict):
  """One record's fields by column name, and the line of its file it ends on (from 1)."""

  def __init__(self, fields, line: int):
    super().__init__(fields)
    self.line = line


@dataclasses.dataclass
class DroppedRows:
  """Rows the readers dropped or repaired, per file, so that no input is lost silently.

  strict: the first such row raises `TaskDataError` naming its `file:line` instead.
  counts: file -> rows dropped or repaired; read: file -> rows read (the denominator).
  first: `file:line: problem (what was done)` of the first `SHOWN` of them.
  """
  SHOWN = 5

  strict: bool = False
  counts: dict[str, int] = dataclasses.field(default_factory=dict)
  read: dict[str, int] = dataclasses.field(default_factory=dict)
  first: list[str] = dataclasses.field(default_factory=list)

  def add(self, path: str, line: int, problem: str, action: str = 'dropped') -> None:
    where = f'{path}:{line}: {problem}'
    if self.strict:
      raise TaskDataError(f'{where}; fix or delete that row (without --config.task.strict=True '
                          f'it would be {action} and counted)')
    self.counts[path] = self.counts.get(path, 0) + 1
    if len(self.first) < self.SHOWN:
      self.first.append(f'{where} ({action})')

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def message(self) -> str:
    """One line for the log ('' when nothing was dropped)."""
    if not self.total:
      return ''
    files = '; '.join(f'{path}: {n} of {self.read.get(path, n)}'
                      for path, n in self.counts.items())
    records = 'record' if self.total == 1 else 'records'
    return (f'task data: {self.total} malformed {records} dropped or repaired ({files}); first: '
            f'{" | ".join(self.first)}; --config.task.strict=True makes them an error')

  def log_fields(self) -> dict[str, Any]:
    """For the run's start event: counts per file and the first positions."""
    return {'dropped_rows': self.total, 'dropped_rows_per_file': dict(self.counts),
            'dropped_rows_first': list(self.first)} if self.total else {'dropped_rows': 0}


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


def read_delimited(path: str, drops: DroppedRows, *, header: bool = True,
                   names: Sequence[str] = ()) -> list[Row]:
  """Rows of a TSV/CSV file keyed by column name.

  Column names come from the header row; with header=False, from `names` if given, else the
  0-based column index as a string ('0', '1', ...). A row with fewer fields than the header
  is dropped (GLUE's QQP train file has a few such broken lines; HF's processors skip them),
  one with more keeps the first ones (a TSV text holding a tab); both are counted in `drops`.
  """
  tsv = '.tsv' in os.path.basename(path)
  with open_text(path) as f:
    reader = (csv.reader(f, delimiter='\t', quoting=csv.QUOTE_NONE) if tsv else csv.reader(f))
    rows = [(row, reader.line_num) for row in reader if row]
  if not rows:
    return []
  if header:
    (columns, _), rows = rows[0], rows[1:]
  else:
    columns = list(names) or [str(i) for i in range(max(len(r) for r, _ in rows))]
  drops.read[path] = drops.read.get(path, 0) + len(rows)
  kept = []
  for row, line in rows:
    if len(row) != len(columns):
      problem = (f'{len(row)} field{"" if len(row) == 1 else "s"} where the header has '
                 f'{len(columns)}')
      if len(row) < len(columns):
        drops.add(path, line, problem)
        continue
      drops.add(path, line, problem, 'repaired: the extra fields ignored')
    kept.append(Row(zip(columns, row), line))
  return kept


def read_jsonl(path: str, drops: DroppedRows) -> list[Row]:
  records = []
  with open_text(path) as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise TaskDataError(f'{path}:{number}: not JSON ({e.msg}); a .jsonl file holds one '
                            'object per line') from None
      if not isinstance(record, dict):
        raise TaskDataError(f'{path}:{number}: a JSON {type(record).__name__}, not an object; '
                            'a .jsonl file holds one object per line')
      records.append(Row(record, number))
  drops.read[path] = drops.read.get(path, 0) + len(records)
  return records


def read_conll(path: str, drops: DroppedRows) -> list[Example]:
  """Sentences of `token<TAB>tag` lines (tag = last column), blank-line separated. A sentence
  with a line lacking its tag is dropped whole (counted once in `drops`, at that line)."""
  examples, words, tags = [], [], []
  broken = 0  # sentences dropped

  def flush():
    if words:
      examples.append(Example(words=tuple(words), tags=tuple(tags), uid=str(len(examples))))
    words.clear()
    tags.clear()

  skipping = False  # the rest of a dropped sentence
  with open_text(path) as f:
    for number, line in enumerate(f, start=1):
      line = line.rstrip('\r\n')
      if not line.strip():
        flush()
        skipping = False
        continue
      fields = line.split('\t') if '\t' in line else line.split()
      if fields[0] == '-DOCSTART-' or skipping:
        continue
      if len(fields) < 2:
        drops.add(path, number, f'expected "token<TAB>tag", got {line!r}',
                  'its sentence dropped')
        broken += 1
        skipping = True
        words.clear()
        tags.clear()
        continue
      words.append(fields[0])
      tags.append(fields[-1])
  flush()
  drops.read[path] = drops.read.get(path, 0) + len(examples) + broken
  return examples


def _check_columns(rows: Sequence[Row], names: Sequence[str], path: str, fix: str) -> None:
  """A column no row has is a configuration error (not a malformed row): one line naming it."""
  present = set().union(*rows)
  missing = [name for name in names if name not in present]
  if missing:
    raise TaskDataError(f'{path}: no column {missing[0]!r} (columns: '
                        f'{", ".join(map(str, rows[0]))}); {fix}')


def _blank(value: Any) -> bool:
  return value is None or not str(value).strip()


def rows_to_examples(rows: Sequence[Row], path: str, drops: DroppedRows, *,
                     text_columns: Sequence[str], label_column: str,
                     choice_columns: Sequence[str] = (), uid_column: str = '') -> list[Example]:
  """Sequence or multiple-choice examples from rows; a split without the label column (a test
  set) gets label None. A row missing a column the others have (JSONL), with an empty label,
  or with an empty text (allowed only as the shared context of multiple choice) is dropped and
  counted in `drops`."""
  if not rows:
    return []
  _check_columns(rows, [*text_columns, *choice_columns], path,
                 'set --config.task.text_columns / label_column / choice_columns to the names '
                 'in its header (or indices with --config.task.header=False)')
  labelled = bool(label_column) and any(label_column in row for row in rows)
  required = [*choice_columns, *([label_column] if labelled else [])]
  if not choice_columns:
    required += text_columns
  examples = []
  for i, row in enumerate(rows):
    missing = ([c for c in text_columns if c not in row]
               + [c for c in required if _blank(row.get(c))])
    if missing:
      drops.add(path, row.line, f'{"no" if missing[0] not in row else "empty"} {missing[0]!r}')
      continue
    texts = tuple(str(row[c]) for c in text_columns)
    choices = ()
    if choice_columns:
      values = [row[c] for c in choice_columns]
      # One JSON column may hold the whole list of choices.
      choices = tuple(map(str, values[0] if len(values) == 1 and isinstance(values[0], list)
                          else values))
    uid = str(row[uid_column]) if uid_column and uid_column in row else str(i)
    examples.append(Example(texts=texts, label=row[label_column] if labelled else None,
                            choices=choices, uid=uid))
  return examples


def rows_to_seq2seq(rows: Sequence[Row], path: str, drops: DroppedRows, *, source_column: str,
                    target_column: str, require_target: bool) -> list[Example]:
  """Source -> target examples (`texts=(source,)`, `target`) from headed rows.

  A file with the target column is labelled: a row with an empty (or, in JSONL, no) source or
  target is dropped and counted in `drops`. Without it (allowed unless `require_target`, i.e.
  for an unlabelled test set) targets are None.
  """
  if not rows:
    raise TaskDataError(f'{path} holds no examples (empty, or a header only); a seq2seq file '
                        f'needs a header naming {source_column!r} and {target_column!r} and '
                        'one example per row')
  _check_columns(rows, [source_column, target_column] if require_target else [source_column],
                 path, 'set --config.task.source_column / target_column to the names in its '
                 'header')
  labelled = any(target_column in row for row in rows)
  names = [source_column, target_column] if labelled else [source_column]
  examples = []
  for number, row in enumerate(rows):
    empty = [c for c in names if _blank(row.get(c))]  # a JSONL record may lack a key: None
    if empty:
      drops.add(path, row.line, f'empty {empty[0]!r}')
      continue
    target = str(row[target_column]) if labelled else None
    examples.append(Example(texts=(str(row[source_column]),), target=target, uid=str(number)))
  return examples


def iter_split_files(data_dir: str, split: str, suffixes: Sequence[str]) -> Iterator[str]:
  """`<data_dir>/<split><suffix>[.gz]` candidates that exist."""
  for suffix in suffixes:
    for name in (split + suffix, split + suffix + '.gz'):
      path = os.path.join(data_dir, name)
      if os.path.exists(path):
        yield path
