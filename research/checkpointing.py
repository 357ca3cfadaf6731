"""Checkpoints: a thin wrapper around an Orbax `CheckpointManager`.

Each step directory `<directory>/<step>/` holds two items:
  state: the train state, a pytree of arrays (params, optimizer state, step,
         PRNG key *data*: `jax.random.key_data(key)`, since typed keys are not
         arrays Orbax can write);
  data:  the input iterator's state, a JSON-serialisable dict.

Saving is asynchronous: `save` returns once the arrays are copied off the
device (so the caller may donate them to the next train step) and the files
are written by a background thread; `wait` blocks until that finishes, and
`close` must be called before the process exits normally.

Kill safety comes from Orbax's atomic commit: a step is written into
`<step>.orbax-checkpoint-tmp` and only renamed to `<step>` once every file is
written, so a process killed mid-save leaves a temporary directory that
`latest_step` and `restore` ignore. (We leave Orbax's
`cleanup_tmp_directories` off: it would let a second reader process, e.g. an
evaluator pointed at a training workdir, delete the trainer's in-flight save.
A new save of the same step replaces the leftover directory.)

Damage is survived, not reported and left for a person: `restore` reads the
newest step, and if it cannot be read (a truncated array file, a broken JSON
file, a missing item: a node that died mid-copy, a full disk, a bad sync) and
an older step can, it moves the unreadable one aside to `<step>.damaged`
(nothing is ever deleted), logs one warning naming the directory and the
cause, and restores the older step; a requeued job then recovers on its own.
Only the run that holds the workdir's lock (research/workdir_lock.py: training,
fine-tuning) moves anything; readers (--mode=eval, fine-tuning from a
pretraining workdir) fall back the same way and leave the files as they are.
A step moves aside only once an older one proved readable: if no step can be
read, the cause is more likely the reader (memory, permissions) than every
file, so `restore` raises and touches nothing. A checkpoint of a different
model is never "damage": that is a wrong --workdir or config, and an error.

A save that fails (no space left, no permission) raises `CheckpointError`
naming the newest complete step, which Orbax's atomic commit leaves intact.

On multi-host runs every process calls every method; Orbax decides which
process writes what.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from research import workdir_lock

_STATE = 'state'
_DATA = 'data'
_MAX_CAUSE_CHARS = 240
DAMAGED_SUFFIX = '.damaged'


class CheckpointError(RuntimeError):
  """A checkpoint cannot be restored or written; the message says why and what to do."""


class Checkpointer:
  """Saves and restores `(state, data_state)` pairs, keeping the last `keep`."""

  def __init__(self, directory: str, keep: int):
    directory = os.path.abspath(directory)  # Orbax rejects relative paths (e.g. --workdir=runs/x)
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    # One handler instance per item serves both its save and restore args.
    state_handler = ocp.StandardCheckpointHandler()
    data_handler = ocp.JsonCheckpointHandler()
    registry.add(_STATE, ocp.args.StandardSave, state_handler)
    registry.add(_STATE, ocp.args.StandardRestore, state_handler)
    registry.add(_DATA, ocp.args.JsonSave, data_handler)
    registry.add(_DATA, ocp.args.JsonRestore, data_handler)
    options = ocp.CheckpointManagerOptions(
        create=True,
        preservation_policy=ocp.checkpoint_managers.LatestN(n=keep),
        enable_async_checkpointing=True,
    )
    self._manager = ocp.CheckpointManager(
        directory, options=options, handler_registry=registry
    )
    self._pending = None  # the step of the newest save (for error messages)
    _drop_closed_loop_callbacks()

  @property
  def directory(self) -> str:
    return str(self._manager.directory)

  def latest_step(self) -> int | None:
    """The newest saved step, or None; includes a save still in flight."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
    """Starts writing `state` and `data_state` as checkpoint `step`.

    A step at or before the latest saved one is skipped (Orbax's policy), so
    saving the step that was just restored is a no-op rather than an error.

    Raises:
      CheckpointError: this save, or the previous one still in flight,
        failed (e.g. no space left on the device).
    """
    self.wait()  # Orbax would wait too; here a failure is reported with its own step
    self._pending = step
    with self._write_errors():
      self._manager.save(
          step,
          args=ocp.args.Composite(**{
              _STATE: ocp.args.StandardSave(state),
              _DATA: ocp.args.JsonSave(data_state),
          }),
      )

  def restore(
      self, abstract_state: Any, step: int | None = None
  ) -> tuple[Any, dict[str, Any]]:
    """Restores checkpoint `step`, or the newest readable one.

    Args:
      abstract_state: the state's pytree of `jax.ShapeDtypeStruct` with
        `.sharding` set; arrays are restored with those dtypes and shardings.
        Shardings may differ from the ones saved with (another mesh or device
        count): Orbax reads each device's part of every array.
      step: the step to restore (unreadable: an error); None for the newest
        readable step, moving unreadable newer ones aside (module docstring).

    Returns:
      `(state, data_state)`.

    Raises:
      CheckpointError: no checkpoint, a checkpoint of a different model, or
        no readable checkpoint.
    """
    self.wait()  # a save still in flight is listed but not yet on disk
    steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(
          f'no checkpoint in {self._manager.directory}; call restore only '
          'when latest_step() is not None.'
      )
    unreadable = []
    for candidate in steps:
      try:
        restored = self._restore_step(candidate, abstract_state)
      except _Unreadable as e:
        unreadable.append((candidate, e))
        continue
      for bad_step, cause in unreadable:
        self._move_aside(bad_step, cause)
      if unreadable:
        self._manager.reload()  # the moved steps are gone from the listing
      return restored
    first_step, first_cause = unreadable[0]
    older = f' (steps {", ".join(str(s) for s, _ in unreadable[1:])} neither)' if len(
        unreadable) > 1 else ''
    first_dir = self._step_dir(first_step)
    raise CheckpointError(
        f'no readable checkpoint in {self._manager.directory}: {first_cause}{older}; nothing '
        'was moved, since when no step is readable the reader (memory, permissions) is a '
        f'likelier cause than every file. If they are damaged, move them aside (mv {first_dir} '
        f'{first_dir}{DAMAGED_SUFFIX}) to start afresh.'
    )

  def restore_params(self, abstract_params: Any, step: int | None = None) -> Any:
    """Only the parameters of checkpoint `step` (default: the latest), laid out as
    `abstract_params` (ShapeDtypeStructs with shardings): an Orbax partial restore that
    reads neither the optimizer state nor the input iterator (generation, evaluation and
    fine-tuning need the weights alone)."""
    self.wait()
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint in {self._manager.directory}; train first or '
                            'point at a trained run')
    step_dir = self._manager.directory / str(step)
    try:
      saved = self._manager.item_metadata(step)[_STATE]
      saved_shapes = {
          path: tuple(leaf.shape)
          for path, leaf in ocp.tree.to_flat_dict(saved.tree, sep='/').items()
          if path.startswith('params/')
      }
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupted(step, step_dir, e) from e
    _check_same_structure(saved_shapes, {'params': abstract_params}, step_dir)
    try:
      restored = ocp.PyTreeCheckpointer().restore(
          step_dir / _STATE,
          args=ocp.args.PyTreeRestore(
              item={'params': abstract_params},
              restore_args=ocp.checkpoint_utils.construct_restore_args(
                  {'params': abstract_params}),
              partial_restore=True))
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupted(step, step_dir, e) from e
    return restored['params']

  def wait(self) -> None:
    """Blocks until the last `save` is committed to disk.

    Raises:
      CheckpointError: that save failed.
    """
    with self._write_errors():
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases Orbax's background resources."""
    with self._write_errors():
      self._manager.close()

  def _step_dir(self, step: int):
    return self._manager.directory / str(step)

  def _restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores `step`; raises `_Unreadable` naming the file or item that cannot be read."""
    step_dir = self._step_dir(step)

    def metadata_shapes():
      saved = self._manager.item_metadata(step)[_STATE]
      if saved is None:
        raise FileNotFoundError('missing')
      return {path: tuple(leaf.shape)
              for path, leaf in ocp.tree.to_flat_dict(saved.tree, sep='/').items()}

    def restore(name, args):
      return self._manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]

    saved_shapes = _read(step_dir / _STATE, metadata_shapes)
    # Checked before restoring so that the error names the offending
    # parameter instead of surfacing as a TensorStore shape error.
    _check_same_structure(saved_shapes, abstract_state, step_dir)
    data_state = _read(step_dir / _DATA, lambda: restore(_DATA, ocp.args.JsonRestore()))
    state = _read(step_dir / _STATE,
                  lambda: restore(_STATE, ocp.args.StandardRestore(abstract_state)))
    return state, data_state

  def _move_aside(self, step: int, cause: _Unreadable) -> None:
    """Renames an unreadable step out of Orbax's sight, if this run is the workdir's writer
    (holds its lock, research/workdir_lock.py): readers (--mode=eval, fine-tuning from a
    pretraining workdir) only fall back, leaving another run's files as they are."""
    step_dir = self._step_dir(step)
    writer = workdir_lock.holds(step_dir)
    if jax.process_count() > 1:  # process 0 holds the lock for all
      writer = bool(multihost_utils.broadcast_one_to_all(np.int32(writer)))
    if not writer:
      logging.warning('checkpoint step %d is unreadable (%s); restoring an older step (its '
                      'directory is left for the run that writes there)', step, cause)
      return
    target = step_dir.parent / f'{step}{DAMAGED_SUFFIX}'
    n = 1
    while target.exists():  # damaged twice at the same step: keep both
      target = step_dir.parent / f'{step}{DAMAGED_SUFFIX}-{n}'
      n += 1
    if jax.process_index() == 0:  # the lock holder
      os.rename(step_dir, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'checkpoint_move_aside_{step}')
    logging.warning('checkpoint step %d is unreadable (%s); moved it aside to %s and restoring '
                    'an older step', step, cause, target)

  @contextlib.contextmanager
  def _write_errors(self):
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      self._manager.reload()
      kept = self._manager.latest_step()
      kept = (f'the newest complete one, step {kept}, is kept' if kept is not None
              else 'there is no complete one yet')
      raise CheckpointError(
          f'could not write checkpoint {self._pending} in {self._manager.directory} '
          f'({_cause(e)}); {kept}. Free space or fix permissions there, then run the same '
          'command again to resume.'
      ) from e


class _Unreadable(Exception):
  """A checkpoint file or item that cannot be read (damaged, or by this reader)."""


def _read(path, read: Callable[[], Any]) -> Any:
  """`read()`, or `_Unreadable('<path>: <cause>')` if it fails on any process (on multi-host
  runs a file may be damaged for one reader only; all processes must fall back together)."""
  try:
    result, cause = read(), None
    if result is None:  # Orbax returns None for an item it cannot find
      raise FileNotFoundError('missing')
  except Exception as e:  # pylint: disable=broad-except
    result, cause = None, e
  if jax.process_count() > 1:
    ok = np.min(multihost_utils.process_allgather(np.int32(cause is None)))
    if not ok and cause is None:
      raise _Unreadable(f'{path}: unreadable on another process')
  if cause is not None:
    raise _Unreadable(f'{path}: {_cause(cause)}')
  return result


def _drop_closed_loop_callbacks() -> None:
  """Silences the tracebacks TensorStore prints after a failed read or write: Orbax closes
  the operation's event loop at the first error, and the reads or writes still in flight then
  report `RuntimeError: Event loop is closed` as unraisable exceptions (noise: the failure
  itself is raised). Every other unraisable exception still reaches the previous hook."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_closed_loop_callbacks', False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      previous(unraisable)

  hook.drops_closed_loop_callbacks = True
  sys.unraisablehook = hook


def _cause(error: Exception) -> str:
  """`Type: message` on one line, short enough for a one-line message: a long message keeps
  its start (what failed) and its end (why: TensorStore ends with the OS error, once its
  spec of the store is cut off)."""
  detail = ' '.join(str(error).split())
  detail = re.sub(r'\s*\[(tensorstore_spec|source locations)=.*$', '', detail)
  if len(detail) > _MAX_CAUSE_CHARS:
    detail = f'{detail[:_MAX_CAUSE_CHARS // 2]} ... {detail[-_MAX_CAUSE_CHARS // 2:]}'
  return f'{type(error).__name__}: {detail}' if detail else type(error).__name__


def _check_same_structure(
    saved_shapes: dict[str, tuple[int, ...]],
    abstract_state: Any,
    step_dir: os.PathLike[str],
) -> None:
  """Raises if the checkpoint's arrays differ in path or shape from the model."""
  wanted_shapes = {
      path: tuple(np.shape(leaf))
      for path, leaf in ocp.tree.to_flat_dict(abstract_state, sep='/').items()
  }
  absent = 'absent'
  mismatches = [
      (path, saved_shapes.get(path, absent), wanted_shapes.get(path, absent))
      for path in [*wanted_shapes, *(p for p in saved_shapes
                                     if p not in wanted_shapes)]
      if saved_shapes.get(path) != wanted_shapes.get(path)
  ]
  if not mismatches:
    return
  # Name the least nested mismatch: a parameter rather than its copies in
  # the optimizer state.
  path, saved, wanted = min(mismatches, key=lambda m: m[0].count('/'))
  more = f' (and {len(mismatches) - 1} more)' if len(mismatches) > 1 else ''
  raise CheckpointError(
      f'checkpoint {step_dir} holds a different model: {path} is {saved} in '
      f'the checkpoint but {wanted} in the config{more}; use a fresh '
      '--workdir or the config this workdir was trained with.'
  )
