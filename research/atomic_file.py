"""Whole-file writes that a kill cannot leave half done: write a temporary file beside the
target, then rename it over the target (atomic on POSIX file systems), so a reader sees the old
file or the new one, never a prefix. For files rewritten whole: predictions, tables, records of
a run's outcome; append-only logs (metrics.jsonl) need no copy (research/reporting.py)."""
from __future__ import annotations

import os
import tempfile


def write_text(path: str | os.PathLike, text: str) -> None:
  """Replaces `path` with `text` (UTF-8) all at once."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=directory)
  try:
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
