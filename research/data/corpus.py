"""Pretraining corpora: reading documents and holding some out for evaluation.

A corpus is a list of documents, each a list of non-empty lines (sentences or
paragraphs). Documents matter because BERT's next-sentence prediction draws
"IsNext" pairs from one document and "NotNext" pairs from two (Devlin et al.
2019, Sec 3.1 Task #2 and Sec 3.3 "Pre-training data": "it is critical to use a
document-level corpus rather than a shuffled sentence-level corpus").

Formats read:
  * text (`.txt`, `.txt.gz`, or any other file given by name): google-research/
    bert's `create_pretraining_data.py` format, one sentence or paragraph per
    line, a blank line between documents;
  * JSONL (`.jsonl`, `.jsonl.gz`): one object per line whose `text` field is a
    document; its non-empty lines are its paragraphs;
  * a directory: every file of the suffixes above under it, recursively, in
    sorted path order (a file boundary is also a document boundary).
Files are UTF-8 (a byte-order mark and '\r\n' line ends are fine; lines may be of any
length); anything else is an error naming the file and line (data/text_files.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from research.data import text_files

Document = list[str]

_TEXT_SUFFIXES = ('.txt', '.txt.gz')
_JSONL_SUFFIXES = ('.jsonl', '.jsonl.gz')


class CorpusError(ValueError):
  """A corpus that cannot be used; the message names the path and the fix."""


def default_corpus_path() -> Path:
  """The vendored Austen novels (see assets/PROVENANCE.md)."""
  return Path(__file__).parent / 'assets' / 'austen.txt.gz'


def _read_text(path: Path) -> Iterator[Document]:
  document = []
  with text_files.TextLines(path) as f:
    for line in f:
      line = line.strip()
      if line:
        document.append(line)
      elif document:
        yield document
        document = []
  if document:
    yield document


def _read_jsonl(path: Path) -> Iterator[Document]:
  with text_files.TextLines(path) as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise CorpusError(
            f'{path}:{line_number}: not JSON ({e.msg}); each line of a .jsonl'
            ' corpus must be one object with a "text" field.') from None
      if not isinstance(record, dict) or not isinstance(record.get('text'), str):
        raise CorpusError(
            f'{path}:{line_number}: no "text" string field; each line of a'
            ' .jsonl corpus must be one object with a "text" field.')
      document = [p.strip() for p in record['text'].splitlines() if p.strip()]
      if document:
        yield document


def _read_file(path: Path) -> Iterator[Document]:
  if path.name.endswith(_JSONL_SUFFIXES):
    return _read_jsonl(path)
  return _read_text(path)


def read_documents(path: str | os.PathLike) -> list[Document]:
  """Reads a corpus file or directory into documents of non-empty lines."""
  path = Path(path)
  if not path.exists():
    raise CorpusError(
        f'corpus {path} does not exist; pass an existing file or directory'
        " (or '' for the bundled Austen corpus) as --config.data.corpus.")
  if path.is_dir():
    files = sorted(
        p for p in path.rglob('*')
        if p.is_file() and p.name.endswith(_TEXT_SUFFIXES + _JSONL_SUFFIXES))
    if not files:
      raise CorpusError(
          f'corpus directory {path} has no {"/".join(_TEXT_SUFFIXES + _JSONL_SUFFIXES)}'
          ' files; add some or point --config.data.corpus at a file.')
  else:
    files = [path]
  documents = [doc for f in files for doc in _read_file(f)]
  if not documents:
    raise CorpusError(
        f'empty corpus: {path} has no text; blank lines only separate'
        ' documents, so give it at least one non-empty line.')
  return documents


def split_documents(documents: list[Document],
                    eval_every: int) -> tuple[list[Document], list[Document]]:
  """Holds out every `eval_every`-th document (indices k*eval_every - 1).

  Whole documents are held out, not lines, so that no evaluation paragraph has
  its neighbours in training data (NSP and long-context models could otherwise
  copy them). A corpus with fewer than `eval_every` documents holds out its
  last one, so that evaluation never silently runs on nothing.
  """
  if eval_every < 2:
    raise CorpusError(
        f'eval_every={eval_every} leaves no training documents; set'
        ' --config.data.eval_every to 2 or more, or set --config.data.eval_corpus.')
  if len(documents) < 2:
    raise CorpusError(
        f'a corpus of {len(documents)} document cannot be split into train and'
        ' eval; add blank lines between documents or set --config.data.eval_corpus.')
  held_out = set(range(eval_every - 1, len(documents), eval_every))
  held_out = held_out or {len(documents) - 1}
  train = [d for i, d in enumerate(documents) if i not in held_out]
  evaluation = [d for i, d in enumerate(documents) if i in held_out]
  return train, evaluation


def load_corpora(config) -> tuple[list[Document], list[Document]]:
  """(train, eval) documents from config.data.{corpus, eval_corpus, eval_every}."""
  documents = read_documents(config.data.corpus or default_corpus_path())
  if config.data.eval_corpus:
    return documents, read_documents(config.data.eval_corpus)
  return split_documents(documents, config.data.eval_every)
