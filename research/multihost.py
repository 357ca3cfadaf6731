"""What a multi-host run does when one of its processes dies: the others stop, in bounded time,
with one line naming the lost process and an exit status that asks for a restart.

Hosts started one command per host (a TPU VM pod's `--worker=all`, `srun` without
`--kill-on-bad-exit`) have no supervisor that stops the survivors when one host dies (SIGKILL,
the OOM killer, a lost node). Two things end a survivor instead:
  * its next collective fails: gloo (CPU) and NCCL see the dead peer's connection reset and
    raise at once. Left alone, the process then hangs in Orbax's and JAX's exit barriers until
    the coordination service gives up on the dead peer, and aborts with a C++ stack dump
    (measured: 70 s, exit status 134, which nothing requeued).
  * the coordination service misses the dead process's heartbeats for `HEARTBEAT_TIMEOUT_S`
    and aborts every process (JAX's `Terminating process because the JAX distributed service
    detected fatal errors ... stopped sending heartbeats: ... task:N`, exit status 134): the
    bound for a survivor that never fails a collective (a peer silent without resetting its
    connections, e.g. a powered-off node).
`exit_on_lost_peer` turns the first into `error: lost process N of M ...` and exit status
`EXIT_LOST_PEER` (75, EX_TEMPFAIL), without the exit barriers; launch/sweep.py's SLURM script
requeues on it, and the same command resumes every process from the newest complete
checkpoint (research/checkpointing.py).
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Iterator

import jax

# The coordination service declares a process dead after this long without a heartbeat
# (JAX's default is 100 s); heartbeats come from a background thread, so a long compilation
# or checkpoint write does not miss them.
HEARTBEAT_TIMEOUT_S = 30
# How long a finishing process waits for the others at JAX's exit barrier (JAX: 300 s).
SHUTDOWN_TIMEOUT_S = 60
# "Temporary failure": the run can go on from its checkpoint once every process is back.
EXIT_LOST_PEER = 75
# How long a survivor waits for the others to say they are alive before naming the lost ones.
_ROLL_CALL_S = 10.0

# A collective or coordination call that failed because a peer process is gone.
_PEER_LOST = re.compile(
    r'Connection reset by peer|Connection closed by peer|Socket closed|Broken pipe|'
    r'stopped sending heartbeats|Connection refused|failed to connect to all addresses',
    re.IGNORECASE)


def initialize_args() -> dict[str, int]:
  """The timeouts `jax.distributed.initialize` is given (module docstring)."""
  return {'heartbeat_timeout_seconds': HEARTBEAT_TIMEOUT_S,
          'shutdown_timeout_seconds': SHUTDOWN_TIMEOUT_S}


def peer_failure(error: BaseException) -> str:
  """The line of a JAX runtime error in `error` or its causes that says a peer process is gone
  ('' if none does; a project error such as CheckpointError may wrap it)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, jax.errors.JaxRuntimeError):
      for line in str(error).splitlines():
        if _PEER_LOST.search(line):
          return line.strip()
    error = error.__cause__ or error.__context__
  return ''


def lost_processes(timeout: float = _ROLL_CALL_S) -> list[int] | None:
  """A roll call through the coordination service's key-value store: each survivor writes its
  index and waits up to `timeout` for the others; the indices missing are the lost processes.
  None when the service itself does not answer (process 0, which hosts it, is gone)."""
  from jax._src import distributed  # noqa: PLC0415 (the client jax.distributed made)
  client = distributed.global_state.client
  me, count = jax.process_index(), jax.process_count()
  answer: list = []

  def call():
    client.key_value_set(f'research/alive/{me}', '1', allow_overwrite=True)
    deadline = time.monotonic() + timeout
    while True:
      alive = {int(k.rsplit('/', 1)[1]) for k, _ in client.key_value_dir_get('research/alive/')}
      if len(alive) == count or time.monotonic() > deadline:
        answer.append(sorted(set(range(count)) - alive))
        return
      time.sleep(0.2)

  thread = threading.Thread(target=call, daemon=True)
  thread.start()
  thread.join(timeout + 5)
  return answer[0] if answer else None


def describe_lost(lost: list[int] | None) -> str:
  count = jax.process_count()
  if lost is None:
    return f'lost process 0 of {count} (the coordinator: its service does not answer)'
  if not lost:
    return f'lost a peer of the {count} processes (all answered the roll call since)'
  return f'lost process{"es" if len(lost) > 1 else ""} {", ".join(map(str, lost))} of {count}'


@contextlib.contextmanager
def exit_on_lost_peer() -> Iterator[None]:
  """In a multi-process run, an error caused by a lost peer ends this process at once with one
  `error:` line on stderr and exit status `EXIT_LOST_PEER`: `os._exit`, because the exit
  barriers of Orbax and JAX would wait for the dead process. Other errors pass through."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    failure = peer_failure(e) if jax.process_count() > 1 else ''
    if not failure:
      raise
    print(f'error: {describe_lost(lost_processes())} (process {jax.process_index()}: '
          f'{failure[:200]}); run the same command on every host to resume from the newest '
          f'complete checkpoint (exit status {EXIT_LOST_PEER}: the SLURM script requeues)',
          file=sys.stderr, flush=True)
    os._exit(EXIT_LOST_PEER)  # pylint: disable=protected-access
