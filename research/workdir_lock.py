"""One writer per workdir: the lock file `<workdir>/writer.lock`.

Training and fine-tuning hold it for the whole run (research/main.py), so a sweep started twice
or a colleague's run aimed at the same directory stops at once with a line naming the holder,
instead of two runs interleaving checkpoints. `--mode=eval` and `--mode=generate` only read
and take no lock.

The lock is an advisory `flock` on the file, which the kernel releases when the holder exits
in any way (SIGKILL and crashes included), so a lock left behind can never block a restart;
the file's content (host, PID, start time) only names the holder in messages. A non-empty
file whose lock is free was left by a run that died: it is taken over with a warning. The
file is emptied, never deleted, on release: deleting it would let two runs lock two different
files of the same name. On file systems without flock (some Lustre mounts), the content
decides: a holder on this host whose PID is gone is stale; one on another host is trusted.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator

from absl import logging

LOCK_FILE = 'writer.lock'
_held: set[str] = set()  # absolute workdirs whose lock this process holds


def holds(path: str | os.PathLike) -> bool:
  """Whether this process holds the lock of the workdir that is `path` or contains it."""
  path = os.path.abspath(path)
  return any(path == d or path.startswith(d + os.sep) for d in _held)


class WorkdirLocked(RuntimeError):
  """Another run holds the workdir."""


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds `<workdir>/writer.lock` for the duration of the block (creating the workdir)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    _lock(fd, path)
  except BaseException:
    os.close(fd)
    raise
  _held.add(os.path.abspath(workdir))
  try:
    yield
  finally:
    _held.discard(os.path.abspath(workdir))
    os.ftruncate(fd, 0)  # free: an empty file
    os.close(fd)  # releases the flock


def _lock(fd: int, path: str) -> None:
  me = {'host': socket.gethostname(), 'pid': os.getpid(),
        'since': time.strftime('%Y-%m-%d %H:%M:%S')}
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    free = True
  except BlockingIOError:
    free = False
  except OSError as e:  # no flock on this file system: judge by the content alone
    if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
      raise
    free = None
  holder = _read_holder(fd)
  if free is None:
    free = not holder or (holder.get('host') == me['host'] and not _alive(holder.get('pid')))
  if not free:
    raise WorkdirLocked(
        f'{os.path.dirname(path)} is in use by another run ({_describe(holder)}); wait for it '
        f'to finish or stop it, or use another --workdir (the lock is {path})')
  if holder:
    logging.warning('taking over %s from a run that is gone (%s)', path, _describe(holder))
  os.ftruncate(fd, 0)
  os.pwrite(fd, (json.dumps(me) + '\n').encode(), 0)
  os.fsync(fd)


def _read_holder(fd: int) -> dict:
  text = os.pread(fd, 4096, 0).decode('utf-8', 'replace').strip()
  if not text:
    return {}
  try:
    holder = json.loads(text)
  except json.JSONDecodeError:
    return {'unparsed': text[:100]}
  return holder if isinstance(holder, dict) else {'unparsed': text[:100]}


def _alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except (ProcessLookupError, TypeError, ValueError):
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _describe(holder: dict) -> str:
  if not holder:
    return 'holder unknown'
  if 'unparsed' in holder:
    return f'holder {holder["unparsed"]!r}'
  return f'host {holder.get("host")}, PID {holder.get("pid")}, since {holder.get("since")}'
