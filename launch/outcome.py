"""A sweep run's outcome, read from its workdir: finished, failed (exit status and the last
error line of its log) or unfinished (never started, running, or stopped before the end).

A run is finished when its final checkpoint exists (`checkpoints/<train.steps>` of its resolved
config.json): research/loop.py writes it after the final evaluation and its predictions, and
Orbax renames it into place whole, so a run killed at any moment before is not finished.
launch/sweep.py records each local run's exit in `<workdir>/outcome.json` (written whole:
research/atomic_file.py); launch/collect.py tabulates finished runs only and lists the others.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal

from research import atomic_file

FINISHED, FAILED, UNFINISHED = 'finished', 'failed', 'unfinished'
RECORD = 'outcome.json'
# Exits that leave a run to be resumed rather than failed: 0 before the last step (its
# train.steps raised since), SIGTERM / SIGINT after saving a checkpoint (research/main.py).
_RESUMABLE = (0, 128 + signal.SIGTERM, 128 + signal.SIGINT)
# The line that says why a run ended: research.main's `error:` / `preempted:`, a Python
# exception's last line, JAX's fatal log line.
_ERROR_LINE = re.compile(r'^(error: |preempted: |\w+(Error|Exception|Interrupt): |F\d{4} )')


@dataclasses.dataclass(frozen=True)
class Outcome:
  state: str  # FINISHED, FAILED or UNFINISHED
  status: int | None = None  # exit status of its last attempt (None: not recorded)
  error: str = ''  # why it failed: its log's last error line, or the signal that killed it


def is_finished(workdir: str) -> bool:
  """The run's final checkpoint (step = train.steps of its resolved config.json) exists."""
  try:
    with open(os.path.join(workdir, 'config.json')) as f:
      steps = json.load(f)['train']['steps']
  except (OSError, ValueError, KeyError):
    return False
  return os.path.isdir(os.path.join(workdir, 'checkpoints', str(steps)))


def last_error_line(log: str) -> str:
  """The last line of `log` that names an error ('' if none)."""
  lines = [line.strip() for line in log.splitlines() if _ERROR_LINE.match(line.strip())]
  return lines[-1][:300] if lines else ''


def describe_exit(status: int, log: str) -> str:
  """Why a run with exit `status` (Popen's: -S for death by signal S) ended."""
  line = last_error_line(log)
  if status < 0:  # JAX's abort (SIGABRT) says why in its F line; SIGKILL leaves no line
    killed = f'killed by {signal.Signals(-status).name}'
    return f'{killed}: {line}' if line else killed
  return line or f'exit status {status} (no error line in its log)'


def record(workdir: str, status: int, log: str) -> None:
  """Stores the exit of a run's attempt (`log`: what that attempt printed)."""
  atomic_file.write_text(os.path.join(workdir, RECORD), json.dumps(
      {'status': status, 'error': '' if status == 0 else describe_exit(status, log)}) + '\n')


def read(workdir: str) -> Outcome:
  if is_finished(workdir):
    return Outcome(FINISHED, 0)
  try:
    with open(os.path.join(workdir, RECORD)) as f:
      stored = json.load(f)
  except (OSError, ValueError):
    return Outcome(UNFINISHED)
  if stored['status'] in _RESUMABLE:  # stopped or exited before its last step: not failed
    return Outcome(UNFINISHED, stored['status'], stored['error'])
  return Outcome(FAILED, stored['status'], stored['error'])


def table(outcomes: dict[str, Outcome]) -> str:
  """Markdown rows of the runs that are not finished: run, state, exit status, why."""
  lines = ['| run | state | exit status | last error line |', '|---|---|---:|---|']
  for name, result in outcomes.items():
    if result.state != FINISHED:
      status = '' if result.status is None else str(result.status)
      error = result.error.replace('|', '\\|')
      lines.append(f'| {name} | {result.state} | {status} | {error} |')
  return '\n'.join(lines) + '\n'
