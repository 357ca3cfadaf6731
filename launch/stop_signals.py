"""A launcher's stop signals (SIGTERM: `kill`, a scheduler; SIGINT: Ctrl-C) passed on to the
runs it started, which finish their step, save a checkpoint and exit (research/loop.py)."""
from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def passed_on(processes: Callable[[], Iterable[subprocess.Popen]]) -> Iterator[list[int]]:
  """While active, a stop signal to this process is sent to each of `processes()` still
  running (a Ctrl-C has already reached them too: they ignore a second); yields the list of
  signals received so far. Handlers live in the main thread only: elsewhere this does nothing."""
  received = []

  def pass_on(signum, frame):
    del frame
    received.append(signum)
    for process in processes():
      if process.poll() is None:
        process.send_signal(signum)

  previous = {}
  if threading.current_thread() is threading.main_thread():
    previous = {s: signal.signal(s, pass_on) for s in STOP_SIGNALS}
  try:
    yield received
  finally:
    for signum, handler in previous.items():
      signal.signal(signum, handler)
