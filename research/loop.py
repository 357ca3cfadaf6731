"""The step loop shared by pretraining (train.py) and fine-tuning (finetune.py).

step -> report -> (evaluate) -> (checkpoint), from the state's step to the last one. The
checkpoint holds the state and the input iterator's position, and is written after the step's
evaluation, so the last checkpoint of a finished run means the run is complete (including its
final evaluation; launch/sweep.py skips such runs) and a killed run resumes on exactly the
trajectory it was on.

Unattended runs also stop cleanly in two cases:
  * preemption: SIGTERM (what SLURM and cloud schedulers send) or SIGINT (Ctrl-C) lets the
    current step finish, saves its checkpoint synchronously, closes Orbax and raises
    `Preempted` (research/main.py exits with 128 + the signal number: 143 or 130). Further
    signals while saving are only logged. In multi-process runs the processes agree on the
    step: the signal may reach one of them, or each at a different step.
  * divergence: the train step skips non-finite updates (steps.update_if_finite); after
    `max_skipped_steps` skips in a row the loop raises `Diverged` without saving again, so the
    newest checkpoint is the last state the run reached with finite numbers.
"""
from __future__ import annotations

import json
import signal
import threading
from typing import Any, Callable, Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from research import checkpointing, reporting, sharding, state as state_lib

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """SIGTERM or SIGINT stopped the run after checkpoint `step` was saved."""

  def __init__(self, signum: int, step: int, directory: str):
    self.signum, self.step = signum, step
    self.exit_status = 128 + signum  # the shell's convention for "killed by this signal"
    super().__init__(f'stopped by {signal.Signals(signum).name} after step {step}; its '
                     f'checkpoint is saved in {directory}; run the same command again to '
                     'resume')


class Diverged(RuntimeError):
  """Too many consecutive steps had a non-finite loss or gradient norm."""


def init_or_resume(ckpt: checkpointing.Checkpointer, abstract_state, init_state: Callable,
                   data_iter, workdir: str):
  """The state to train from: `init_state()` in a fresh workdir, else the newest checkpoint,
  with the data iterator moved to where that checkpoint left it."""
  if ckpt.latest_step() is None:
    return init_state()
  state, data_state = ckpt.restore(abstract_state)
  data_iter.set_state(data_state)
  logging.info('resumed from step %d of %s', state.step, workdir)
  return state


def compile_step(step_fn: Callable, abstract_state, mesh) -> Callable:
  """`step_fn(state, batch) -> (state, metrics)` jitted once: the state keeps the shardings
  planned for it (state.py), the batch is split over the mesh's data axes, and the input state
  is donated so its buffers are reused for the output."""
  shardings = state_lib.shardings_of(abstract_state)
  return jax.jit(sharding.with_rules(step_fn, mesh),
                 in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, None), donate_argnums=0)


def run(state, train_step: Callable, data_iter: Iterator, mesh, *, total_steps: int,
        reporter: reporting.Reporter, ckpt: checkpointing.Checkpointer, checkpoint_every: int,
        after_step: Callable[[int, Any], dict | None],
        max_skipped_steps: int = 5) -> tuple[Any, dict]:
  """Trains from `state.step` to `total_steps`.

  `train_step(state, batch) -> (state, metrics)` is the jitted step (metrics include
  `skipped`, see steps.update_if_finite); `data_iter` yields host batches (a grain iterator:
  its state is checkpointed). `after_step(done, state)` runs after every step, e.g. to
  evaluate, and returns metrics or None. Returns the final state and the last metrics
  `after_step` returned ({} if it never returned any).

  Raises:
    Preempted: on SIGTERM / SIGINT, once the checkpoint of the step in progress is saved and
      `ckpt` and `reporter` are closed.
    Diverged: after `max_skipped_steps` consecutive skipped steps.
  """
  last = {}
  skips = _SkipWatch(max_skipped_steps, reporter)
  with _StopSignals() as stop:
    try:
      for step in range(int(state.step), total_steps):
        position = data_iter.get_state()  # where this step's batch starts (for Diverged)
        batch = sharding.global_batch(next(data_iter), mesh)
        state, metrics = train_step(state, batch)
        done = step + 1
        # The previous step's flag is read only now, with this step already queued, so the
        # host never waits for the device just to learn that nothing was skipped.
        skips.check_pending()
        skips.pending(done, metrics['skipped'], position)
        reporter.train(done, metrics)
        result = after_step(done, state)
        if result is not None:
          last = result
        if done % checkpoint_every == 0 or done == total_steps:
          ckpt.save(done, state, data_iter.get_state())
        signum = stop.agreed_signal()
        if signum and done < total_steps:
          ckpt.save(done, state, data_iter.get_state())  # a no-op if saved just above
          ckpt.close()  # waits for the write: the step is on disk before the process exits
          reporter.log_event(done, event='preempted', signal=signal.Signals(signum).name)
          reporter.close()
          raise Preempted(signum, done, ckpt.directory)
      skips.check_pending()
    except Diverged:
      ckpt.close()  # commits a save still in flight (its parameters are finite)
      reporter.close()
      raise
    ckpt.wait()
  return state, last


class _SkipWatch:
  """Counts consecutive skipped steps from their on-device `skipped` flags, and records each
  skipped step in metrics.jsonl (`train/skipped` itself is logged only every log_every)."""

  def __init__(self, limit: int, reporter: reporting.Reporter):
    self._limit, self._reporter = limit, reporter
    self._pending = None  # (step, skipped flag on device, data position) not yet read
    self._streak = []  # (step, data position) of the current run of skipped steps

  def pending(self, step: int, skipped: jax.Array, position: dict) -> None:
    self._pending = (step, skipped, position)

  def check_pending(self) -> None:
    if self._pending is None:
      return
    step, skipped, position = self._pending
    self._pending = None
    if not float(skipped):
      self._streak.clear()
      return
    self._streak.append((step, position))
    logging.warning('step %d skipped: its loss or gradient norm is not finite (data position '
                    '%s)', step, json.dumps(position))
    self._reporter.log_event(step, event='skipped', data_position=position)
    if len(self._streak) >= self._limit:
      first, first_position = self._streak[0]
      raise Diverged(
          f'training stopped at step {step}: the loss or gradient norm was not finite for '
          f'{len(self._streak)} steps in a row ({first}-{step}; train.max_skipped_steps='
          f'{self._limit}), so their updates were skipped; step {first}\'s batch starts at '
          f'data position {json.dumps(first_position)}; the newest checkpoint holds finite '
          'parameters: lower optim.learning_rate or inspect that data, then re-run')


class _StopSignals:
  """While active, SIGTERM and SIGINT only request a stop (Python runs handlers in the main
  thread between bytecodes, so a step or a save is never interrupted halfway)."""

  def __init__(self):
    self._signum = 0
    self._previous = {}

  def __enter__(self) -> _StopSignals:
    if threading.current_thread() is threading.main_thread():  # handlers live there only
      for signum in STOP_SIGNALS:
        self._previous[signum] = signal.signal(signum, self._request)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      # None: a handler installed outside Python (e.g. jax.distributed's preemption notifier).
      signal.signal(signum, signal.SIG_DFL if handler is None else handler)

  def _request(self, signum: int, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self._signum:
      logging.warning('received %s again: still saving the checkpoint; the run exits when it '
                      'is written', name)
      return
    self._signum = signum
    logging.warning('received %s: finishing this step, then saving a checkpoint and exiting',
                    name)

  def agreed_signal(self) -> int:
    """The signal that stops the run now (0: none). Every process returns the same value at
    the same step: the largest signal number any of them received (SIGTERM over SIGINT)."""
    if jax.process_count() == 1:
      return self._signum
    flags = multihost_utils.process_allgather(np.int32(self._signum))
    return int(np.max(flags))
