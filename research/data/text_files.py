"""Text files as the corpus and task readers need them: UTF-8 lines, problems located.

`TextLines(path)` reads a file (gzip-compressed if it ends in `.gz`) line by line and decodes
each line as UTF-8 itself, so that bytes that are not UTF-8 are reported with the file and the
line (Python's text mode decodes in blocks and names neither). A byte-order mark at the start
is dropped (Windows editors write one; it would otherwise stick to the first word, header
column or JSON object). Line ends are kept as they are: '\\n' or '\\r\\n' (the csv module needs
them; everything else strips them). Lines have no length limit.
"""
from __future__ import annotations

import codecs
import gzip
import os
import zlib


class TextFileError(ValueError):
  """A file that cannot be read as UTF-8 text; the message names the file, line and fix."""


class TextLines:
  """`with TextLines(path) as f:` iterate over `f` (str lines), or call `f.readline()` /
  `f.read()` as on a text file."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    self._file = (gzip.open if self.path.endswith('.gz') else open)(self.path, 'rb')
    self.line_number = 0  # of the last line returned

  def __enter__(self) -> TextLines:
    return self

  def __exit__(self, *exc) -> None:
    self._file.close()

  def __iter__(self) -> TextLines:
    return self

  def __next__(self) -> str:
    line = self.readline()
    if not line:
      raise StopIteration
    return line

  def readline(self) -> str:
    """The next line with its line end, '' at the end of the file."""
    try:
      raw = self._file.readline()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
      raise TextFileError(f'{self.path}: not a readable gzip file after line '
                          f'{self.line_number} ({e}); compress it again or pass it '
                          'uncompressed') from None
    if not raw:
      return ''
    self.line_number += 1
    if self.line_number == 1 and raw.startswith(codecs.BOM_UTF8):
      raw = raw[len(codecs.BOM_UTF8):]
    try:
      return raw.decode('utf-8')
    except UnicodeDecodeError as e:
      raise TextFileError(
          f'{self.path}:{self.line_number}: not UTF-8 (byte {raw[e.start]:#04x} at byte '
          f'{e.start + 1} of the line); convert the file to UTF-8, e.g. `iconv -f latin1 -t '
          'utf-8`') from None

  def read(self) -> str:
    return ''.join(self)
