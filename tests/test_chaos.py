"""Chaos: a real CLI run killed at random moments ends exactly where an uninterrupted run ends.

Each kill stops a `python -m research.main` pretraining run: SIGKILL at a random moment after
a random step, while an asynchronous checkpoint save is on disk half-written, while the run
evaluates, or while it starts up; SIGTERM once, then SIGINT while it saves (the run must save
the step it is on, release the workdir lock and exit with 143). After every kill the same command runs again; it must resume from the newest
complete checkpoint on disk (from exactly the SIGTERM step) and take over the workdir lock
the killed run left. Once, between two runs, the newest checkpoint's array files are cut in
half (right after the SIGTERM run, so that an older one exists: with none readable, restore
is an error by design): the next run must move it aside with one warning and resume from the
one before. The
run that finally completes must report the same train loss at every step and the same final
eval loss, bit for bit, as a run never interrupted.

  test_chaos_short (CI): SIGKILL during a save, SIGTERM, SIGKILL at a random moment, damage.
  test_chaos_long (`make chaos`, slow): 10 SIGKILLs + 1 SIGTERM + damage; prints the table.
CHAOS_SEED=<int> replays a schedule of random choices (kill timing still depends on the
machine's speed).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal

import pytest

from tests.conftest import LiveRun, tiny_overrides

CHECKPOINT_EVERY = 5
EVAL_EVERY = 20


def _args(corpus: str, workdir, steps: int) -> list[str]:
  return ['--config=configs/gpt.py:variant=tiny', f'--workdir={workdir}',
          *tiny_overrides(corpus, steps), f'--config.checkpoint.every={CHECKPOINT_EVERY}',
          f'--config.train.eval_every={EVAL_EVERY}', '--config.train.eval_batches=8']


def _checkpoint_dir(workdir):
  return os.path.join(workdir, 'checkpoints')


def _complete_steps(workdir) -> list[int]:
  directory = _checkpoint_dir(workdir)
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(
      directory) else []


def _saves_in_flight(workdir) -> set[tuple[str, int]]:
  """(name, inode) of Orbax's temporary step directories: a save not yet committed."""
  directory = _checkpoint_dir(workdir)
  try:
    with os.scandir(directory) as entries:
      return {(e.name, e.inode()) for e in entries if 'orbax-checkpoint-tmp' in e.name}
  except FileNotFoundError:
    return set()


def _final_metrics(workdir) -> tuple[dict[int, float], float]:
  """(train loss of every step, final eval loss); metrics.jsonl is append-only, so a step
  recomputed after a kill has several records: the last one counts."""
  train, evals = {}, {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      if 'train/loss' in record:
        train[record['step']] = record['train/loss']
      if 'eval/loss' in record:
        evals[record['step']] = record['eval/loss']
  return train, evals[max(evals)]


@dataclasses.dataclass
class Kill:
  signal: str
  trigger: str  # start | random | save | after_save | eval; for DAMAGE: what is damaged
  time_s: float = 0.0  # since the process started
  phase: str = ''  # what the run was doing: start / step / eval, '+save' with a save in flight
  last_step: int | None = None
  exit_status: int | None = None
  on_disk: int = 0  # the newest complete checkpoint after the kill
  resumed_from: int | None = None  # what the next run restored (0: a fresh start)


def _phase(run: LiveRun, workdir, saves_before) -> str:
  step = run.last_step()
  if step is None:
    phase = 'start'
  elif step % EVAL_EVERY == 0 and not run.evaluated(step):
    phase = 'eval'
  else:
    phase = 'step'
  return phase + ('+save' if _saves_in_flight(workdir) - saves_before else '')


def _kill_when_due(run: LiveRun, kill: Kill, workdir, steps: int, rng: random.Random) -> bool:
  """Waits for the kill's trigger and sends its signal; False if the run finished first."""
  saves_before = _saves_in_flight(workdir)
  resumed = max(_complete_steps(workdir), default=0)
  if kill.trigger == 'start':
    delay = rng.uniform(0.5, 4.0)
    due = lambda: run.elapsed() > delay
  elif kill.trigger == 'save':
    due = lambda: bool(_saves_in_flight(workdir) - saves_before)
  elif kill.trigger == 'after_save':  # once a new checkpoint is complete: two on disk after
    complete_before = set(_complete_steps(workdir))
    due = lambda: bool(set(_complete_steps(workdir)) - complete_before)
  elif kill.trigger == 'eval':
    due = lambda: (s := run.last_step()) is not None and s > resumed and s % EVAL_EVERY == 0
  else:
    target = rng.randint(resumed + 1, max(resumed + 1, min(resumed + 25, steps - 10)))
    due = lambda: (run.last_step() or 0) >= target
  if not run.wait_for(due):
    return False
  if kill.trigger in ('random', 'after_save'):
    moment = run.elapsed() + rng.uniform(0, 0.3)  # anywhere in the next few steps
    run.wait_for(lambda: run.elapsed() > moment)
  kill.phase = _phase(run, workdir, saves_before)
  kill.time_s = run.elapsed()
  kill.last_step = run.last_step()
  run.process.send_signal(getattr(signal, kill.signal))
  if kill.signal == 'SIGTERM':  # a second signal while it saves must change nothing
    run.wait_for(lambda: any('received SIGTERM' in l for l in run.stderr))
    run.process.send_signal(signal.SIGINT)
  return True


def run_chaos(corpus: str, tmp_path, plan: list[tuple[str, str]], steps: int,
              seed: int) -> tuple[list[Kill], float, float]:
  """Runs the plan of (signal, trigger) kills, then the run to its end, and an uninterrupted
  reference run. Returns the kills, the final eval loss of the killed run and of the
  reference; asserts every resume and the bit-for-bit equality of all losses."""
  rng = random.Random(seed)
  reference = LiveRun(*_args(corpus, tmp_path / 'reference', steps))
  assert reference.finish() == 0, reference.text()

  workdir = tmp_path / 'chaos'
  kills = [Kill(sig, trigger) for sig, trigger in plan]
  previous, damaged = None, None
  for kill in [*kills, None]:
    if kill is not None and kill.signal == 'DAMAGE':  # between runs: a node died mid-copy
      assert len(_complete_steps(workdir)) >= 2, 'nothing to fall back to'  # else: an error
      damaged = max(_complete_steps(workdir))
      for path in (workdir / 'checkpoints' / str(damaged) / 'state').rglob('d/*'):
        os.truncate(path, path.stat().st_size // 2)
      kill.last_step, kill.phase, kill.on_disk = damaged, 'between runs', damaged
      previous = kill
      continue
    on_disk = max((s for s in _complete_steps(workdir) if s != damaged), default=0)
    lock = workdir / 'writer.lock'
    left_locked = lock.exists() and lock.read_text() != ''  # SIGKILL cannot release it
    run = LiveRun(*_args(corpus, workdir, steps))
    if previous is not None:  # every restart resumes from what the kill left on disk
      assert run.wait_for(lambda: run.resumed_from() is not None or run.last_step() is not None), (
          run.text())
      previous.resumed_from = run.resumed_from() or 0
      assert previous.resumed_from == on_disk, (previous, run.text())
      assert any('taking over' in l for l in run.stderr) == left_locked, run.text()
      if previous.signal == 'SIGTERM':  # the step in progress was saved
        assert on_disk >= previous.last_step, previous
    if damaged is not None:  # moved aside with one warning, never deleted
      assert (workdir / 'checkpoints' / f'{damaged}.damaged').is_dir()
      assert sum(f'checkpoint step {damaged} is unreadable' in l for l in run.stderr) == 1
      damaged = None
    if kill is None:
      assert run.finish() == 0, run.text()
      break
    assert _kill_when_due(run, kill, workdir, steps, rng), (
        f'the run finished before the {kill.trigger} trigger: {run.text()}')
    kill.exit_status = run.finish()
    kill.on_disk = max(_complete_steps(workdir), default=0)
    if kill.signal == 'SIGKILL':
      assert kill.exit_status == -signal.SIGKILL, (kill, run.text())
    else:
      assert kill.exit_status == 128 + signal.SIGTERM, (kill, run.text())
      [line] = [l for l in run.stderr if l.startswith('preempted:')]
      assert line == (f'preempted: stopped by SIGTERM after step {kill.on_disk}; its checkpoint '
                      f'is saved in {workdir}/checkpoints; run the same command again to resume')
      assert any('received SIGINT again' in l for l in run.stderr), run.text()
      assert (workdir / 'writer.lock').read_text() == ''  # released
    previous = kill

  chaos_losses, chaos_eval = _final_metrics(workdir)
  reference_losses, reference_eval = _final_metrics(tmp_path / 'reference')
  assert sorted(chaos_losses) == list(range(1, steps + 1))
  assert chaos_losses == reference_losses  # every step, bit for bit
  assert chaos_eval == reference_eval
  return kills, chaos_eval, reference_eval


def _seed() -> int:
  return int(os.environ.get('CHAOS_SEED', random.randrange(10**6)))


def format_table(kills: list[Kill], chaos_eval: float, reference_eval: float, seed: int) -> str:
  dash = lambda x: '-' if x is None else x
  rows = [f'chaos run (CHAOS_SEED={seed}); phase: what the run was doing, +save: with an '
          'asynchronous save in flight',
          f'{"#":>2}  {"event":7}  {"trigger":10}  {"kill at":>8}  {"phase":12}  '
          f'{"last step":>9}  {"exit":>4}  {"on disk":>7}  {"resumed from":>12}']
  for i, k in enumerate(kills, 1):
    time_s = f'{k.time_s:7.2f}s' if k.exit_status is not None else '-'
    rows.append(f'{i:>2}  {k.signal:7}  {k.trigger:10}  {time_s:>8}  {k.phase:12}  '
                f'{dash(k.last_step):>9}  {dash(k.exit_status):>4}  {k.on_disk:>7}  '
                f'{dash(k.resumed_from):>12}')
  rows.append(f'final eval loss: killed run {chaos_eval!r}, uninterrupted run '
              f'{reference_eval!r} ({"identical" if chaos_eval == reference_eval else "DIFFERENT"})')
  return '\n'.join(rows)


def test_chaos_short(small_corpus, tmp_path):
  seed = _seed()
  kills, chaos_eval, reference_eval = run_chaos(
      small_corpus, tmp_path,
      [('SIGKILL', 'save'), ('SIGTERM', 'after_save'), ('DAMAGE', 'truncate'),
       ('SIGKILL', 'random')], steps=40, seed=seed)
  print('\n' + format_table(kills, chaos_eval, reference_eval, seed))
  assert '+save' in kills[0].phase, kills[0]


@pytest.mark.slow
def test_chaos_long(small_corpus, tmp_path):
  seed = _seed()
  plan = [('SIGKILL', 'start'), ('SIGKILL', 'random'), ('SIGKILL', 'save'),
          ('SIGKILL', 'random'), ('SIGKILL', 'eval'), ('SIGTERM', 'after_save'),
          ('DAMAGE', 'truncate'), ('SIGKILL', 'random'), ('SIGKILL', 'save'),
          ('SIGKILL', 'random'), ('SIGKILL', 'eval'), ('SIGKILL', 'random')]
  kills, chaos_eval, reference_eval = run_chaos(small_corpus, tmp_path, plan,
                                                steps=120, seed=seed)
  print('\n' + format_table(kills, chaos_eval, reference_eval, seed))
  assert sum(k.signal == 'SIGKILL' for k in kills) == 10
  assert sum(k.signal == 'SIGTERM' for k in kills) == 1
  assert any('+save' in k.phase for k in kills) and any('eval' in k.phase for k in kills)
