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

On multi-host runs every process calls every method; Orbax decides which
process writes what.
"""

import os
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

_STATE = 'state'
_DATA = 'data'
_MAX_CAUSE_CHARS = 200


class CheckpointError(RuntimeError):
  """A checkpoint cannot be restored; the message says why and what to do."""


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

  def latest_step(self) -> int | None:
    """The newest saved step, or None; includes a save still in flight."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
    """Starts writing `state` and `data_state` as checkpoint `step`.

    A step at or before the latest saved one is skipped (Orbax's policy), so
    saving the step that was just restored is a no-op rather than an error.
    """
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
    """Restores checkpoint `step` (default: the latest).

    Args:
      abstract_state: the state's pytree of `jax.ShapeDtypeStruct` with
        `.sharding` set; arrays are restored with those dtypes and shardings.
      step: the step to restore; None for the latest.

    Returns:
      `(state, data_state)`.

    Raises:
      CheckpointError: no checkpoint, a checkpoint of a different model, or
        an unreadable checkpoint.
    """
    self.wait()  # a save still in flight is listed but not yet on disk
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(
          f'no checkpoint in {self._manager.directory}; call restore only '
          'when latest_step() is not None.'
      )
    step_dir = self._manager.directory / str(step)
    try:
      saved = self._manager.item_metadata(step)[_STATE]
      if saved is None:
        raise FileNotFoundError(f'no readable metadata in {step_dir / _STATE}')
      saved_shapes = {
          path: tuple(leaf.shape)
          for path, leaf in ocp.tree.to_flat_dict(saved.tree, sep='/').items()
      }
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupted(step, step_dir, e) from e
    # Checked before restoring so that the error names the offending
    # parameter instead of surfacing as a TensorStore shape error.
    _check_same_structure(saved_shapes, abstract_state, step_dir)
    try:
      restored = self._manager.restore(
          step,
          args=ocp.args.Composite(**{
              _STATE: ocp.args.StandardRestore(abstract_state),
              _DATA: ocp.args.JsonRestore(),
          }),
      )
    except Exception as e:  # pylint: disable=broad-except
      raise self._corrupted(step, step_dir, e) from e
    return restored[_STATE], restored[_DATA]

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
    """Blocks until the last `save` is committed to disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases Orbax's background resources."""
    self._manager.close()

  def _corrupted(
      self, step: int, step_dir: os.PathLike[str], cause: Exception
  ) -> CheckpointError:
    older = [s for s in self._manager.all_steps() if s < step]
    fallback = (
        f'to fall back to step {max(older)}' if older else 'to start afresh'
    )
    detail = str(cause).splitlines()[0][:_MAX_CAUSE_CHARS] if str(cause) else ''
    # Any failure lands here (Orbax/TensorStore raise ValueError, OSError or
    # bare Exception for damaged files), hence "if it is damaged": the cause
    # is kept so that e.g. running out of memory is not mistaken for damage.
    return CheckpointError(
        f'checkpoint {step_dir} could not be read ({type(cause).__name__}: '
        f'{detail}); if it is damaged, delete that step directory {fallback}.'
    )


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
