"""Tests for research.checkpointing: round trip, keep-N, errors, kill safety."""

import contextlib
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import workdir_lock
from research.checkpointing import CheckpointError, Checkpointer
from tests.conftest import LiveRun, tiny_overrides

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _state(d_model: int = 4, step: int = 3):
  params = {
      'dense': {'kernel': jnp.arange(8 * d_model, dtype=jnp.float32)
                          .reshape(8, d_model) / 7,
                'bias': jnp.full((d_model,), 0.1, jnp.bfloat16)},
  }
  tx = optax.adamw(1e-3)
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.3, params)
  opt_state = tx.update(grads, tx.init(params), params)[1]  # non-zero moments
  return {
      'params': params,
      'opt_state': opt_state,
      'step': jnp.asarray(step, jnp.int32),
      'rng': jax.random.key_data(jax.random.key(42)),
  }


def _sharding(ndim: int) -> jax.sharding.NamedSharding:
  """Dim 0 of matrices sharded over all devices (8 rows divide 1, 2, 4, 8)."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  axes = ('data',) if ndim == 2 else ()
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*axes))


def _abstract(state):
  """ShapeDtypeStructs with shardings, as the train loop builds them."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=_sharding(x.ndim)),
      state)


def _listing(directory) -> dict[str, int]:
  """Every file under `directory` with its size (but the workdir lock some tests hold)."""
  return {str(p.relative_to(directory)): p.stat().st_size
          for p in pathlib.Path(directory).rglob('*')
          if p.is_file() and p.name != workdir_lock.LOCK_FILE}


def _entries(directory) -> list[str]:
  return sorted(n for n in os.listdir(directory) if n != workdir_lock.LOCK_FILE)


def _save(directory, steps, keep=3, d_model=4):
  ckpt = Checkpointer(str(directory), keep=keep)
  for step in steps:
    ckpt.save(step, _state(d_model, step), {'position': step, 'shard': 'a'})
  ckpt.close()


def test_round_trip_is_exact(tmp_path):
  state = _state()
  data_state = {'position': 1234, 'epoch': 2, 'files': ['a', 'b']}
  ckpt = Checkpointer(str(tmp_path), keep=2)
  assert ckpt.latest_step() is None
  ckpt.save(3, state, data_state)
  ckpt.wait()
  ckpt.close()

  ckpt = Checkpointer(str(tmp_path), keep=2)
  assert ckpt.latest_step() == 3
  abstract = _abstract(state)
  restored, restored_data = ckpt.restore(abstract)
  ckpt.close()

  assert restored_data == data_state
  assert (jax.tree.structure(restored) == jax.tree.structure(state))
  for want, got, spec in zip(jax.tree.leaves(state), jax.tree.leaves(restored),
                             jax.tree.leaves(abstract)):
    assert got.dtype == want.dtype
    assert got.sharding == spec.sharding
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert isinstance(restored['opt_state'][0], optax.ScaleByAdamState)


def test_saved_arrays_may_be_donated_right_after_save(tmp_path):
  # The train step donates the state; save must have copied it off device.
  state = _state()
  expected = jax.tree.map(np.asarray, state)
  ckpt = Checkpointer(str(tmp_path), keep=2)
  ckpt.save(1, state, {})
  jax.tree.map(lambda x: x.delete(), state)
  restored, _ = ckpt.restore(_abstract(expected))
  ckpt.close()
  jax.tree.map(np.testing.assert_array_equal, restored, expected)


def test_keeps_only_the_last_n(tmp_path):
  _save(tmp_path, steps=[1, 2, 3, 4, 5], keep=2)
  assert sorted(os.listdir(tmp_path)) == ['4', '5']
  assert Checkpointer(str(tmp_path), keep=2).latest_step() == 5


def test_different_model_shape_is_a_one_line_error(tmp_path):
  _save(tmp_path, steps=[1])
  before = _listing(tmp_path)
  ckpt = Checkpointer(str(tmp_path), keep=3)
  with pytest.raises(CheckpointError) as error:
    ckpt.restore(_abstract(_state(d_model=8)))
  message = str(error.value)
  assert '\n' not in message
  assert 'params/dense/bias is (4,) in the checkpoint but (8,) in the config' in message
  assert 'use a fresh --workdir or the config this workdir was trained' in message
  assert _listing(tmp_path) == before
  # The checkpoint is still usable with the right config.
  restored, _ = ckpt.restore(_abstract(_state()))
  ckpt.close()
  assert int(restored['step']) == 1


def test_different_structure_names_the_missing_path(tmp_path):
  _save(tmp_path, steps=[1])
  state = _state()
  state['params']['extra'] = jnp.zeros((8, 2))
  ckpt = Checkpointer(str(tmp_path), keep=3)
  with pytest.raises(CheckpointError, match=r'params/extra is absent in the '
                     r'checkpoint but \(8, 2\) in the config'):
    ckpt.restore(_abstract(state))
  ckpt.close()


def _truncate_array_files(step_dir):  # as a node dying mid-copy, or a full disk
  files = list((step_dir / 'state').rglob('d/*'))
  assert files
  for path in files:
    os.truncate(path, path.stat().st_size // 2)


def _delete_array_files(step_dir):
  for path in (step_dir / 'state').rglob('d/*'):
    path.unlink()


DAMAGE = {
    'truncated array files': (_truncate_array_files, 'Error reading'),
    'deleted array files': (_delete_array_files, 'NOT_FOUND'),
    'broken iterator-state JSON': (
        lambda d: (d / 'data' / 'metadata').write_text('{"position": 3, "sha'),
        '/data: JSONDecodeError'),
    'broken state metadata JSON': (
        lambda d: (d / 'state' / '_METADATA').write_text('{"tree_metadata": '),
        '/state: JSONDecodeError'),
    'missing data item': (lambda d: shutil.rmtree(d / 'data'), '/data: KeyError'),
    'missing state item': (lambda d: shutil.rmtree(d / 'state'), '/state: KeyError'),
}


def _unreadable_warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if 'is unreadable' in r.getMessage()]


@pytest.mark.parametrize('damage', list(DAMAGE))
def test_damaged_newest_step_is_moved_aside_and_the_previous_restored(tmp_path, damage, caplog):
  damage_fn, cause = DAMAGE[damage]
  _save(tmp_path, steps=[1, 2, 3])
  damage_fn(tmp_path / '3')
  damaged_files = _listing(tmp_path / '3')

  ckpt = Checkpointer(str(tmp_path), keep=3)
  with workdir_lock.hold(str(tmp_path)):  # the workdir's writer (training) moves damage aside
    restored, data_state = ckpt.restore(_abstract(_state()))
  assert int(restored['step']) == 2 and data_state['position'] == 2
  assert _entries(tmp_path) == ['1', '2', '3.damaged']
  assert _listing(tmp_path / '3.damaged') == damaged_files  # moved, nothing deleted
  [warning] = _unreadable_warnings(caplog)
  assert '\n' not in warning and f'{tmp_path}/3' in warning and cause in warning, warning
  assert f'moved it aside to {tmp_path}/3.damaged' in warning

  # Training goes on: step 3 is written afresh; keep-N never deletes the damaged copy.
  for step in (3, 4, 5):
    ckpt.save(step, _state(step=step), {'position': step})
  ckpt.close()
  assert _entries(tmp_path) == ['3', '3.damaged', '4', '5']


def test_two_damaged_steps_fall_back_two_steps(tmp_path, caplog):
  _save(tmp_path, steps=[1, 2, 3])
  _truncate_array_files(tmp_path / '3')
  (tmp_path / '2' / 'data' / 'metadata').write_text('not json')
  ckpt = Checkpointer(str(tmp_path), keep=3)
  with workdir_lock.hold(str(tmp_path)):
    restored, data_state = ckpt.restore(_abstract(_state()))
  ckpt.close()
  assert int(restored['step']) == 1 and data_state['position'] == 1
  assert _entries(tmp_path) == ['1', '2.damaged', '3.damaged']
  assert len(_unreadable_warnings(caplog)) == 2


def test_reader_without_the_workdir_lock_falls_back_and_moves_nothing(tmp_path, caplog):
  _save(tmp_path, steps=[1, 2])
  _truncate_array_files(tmp_path / '2')
  before = _listing(tmp_path)
  ckpt = Checkpointer(str(tmp_path), keep=3)  # e.g. --mode=eval beside a training run
  restored, _ = ckpt.restore(_abstract(_state()))
  ckpt.close()
  assert int(restored['step']) == 1 and _listing(tmp_path) == before
  [warning] = _unreadable_warnings(caplog)
  assert 'left for the run that writes there' in warning


def test_no_readable_step_is_a_one_line_error_and_moves_nothing(tmp_path):
  _save(tmp_path, steps=[1, 2])
  _truncate_array_files(tmp_path / '2')
  shutil.rmtree(tmp_path / '1' / 'data')
  before = _listing(tmp_path)
  ckpt = Checkpointer(str(tmp_path), keep=3)
  with workdir_lock.hold(str(tmp_path)), pytest.raises(CheckpointError) as error:
    ckpt.restore(_abstract(_state()))
  ckpt.close()
  message = str(error.value)
  assert '\n' not in message
  assert f'no readable checkpoint in {tmp_path}: {tmp_path}/2/state: ' in message
  assert '(steps 1 neither)' in message and 'nothing was moved' in message
  assert f'mv {tmp_path}/2 {tmp_path}/2.damaged' in message
  assert _listing(tmp_path) == before


def test_damaged_newest_step_before_a_different_model_stays_an_error(tmp_path):
  _save(tmp_path, steps=[1], d_model=8)  # another model's run in this workdir
  _save(tmp_path, steps=[2])
  _truncate_array_files(tmp_path / '2')
  ckpt = Checkpointer(str(tmp_path), keep=3)
  with workdir_lock.hold(str(tmp_path)), pytest.raises(CheckpointError,
                                                       match='holds a different model'):
    ckpt.restore(_abstract(_state()))
  ckpt.close()
  assert _entries(tmp_path) == ['1', '2']


def test_explicit_step_does_not_fall_back(tmp_path):
  _save(tmp_path, steps=[1, 2])
  _truncate_array_files(tmp_path / '2')
  ckpt = Checkpointer(str(tmp_path), keep=3)
  with workdir_lock.hold(str(tmp_path)), pytest.raises(CheckpointError,
                                                       match=f'{tmp_path}/2/state'):
    ckpt.restore(_abstract(_state()), step=2)
  ckpt.close()
  assert _entries(tmp_path) == ['1', '2']


def _random_state(step: int):
  """2 MB of incompressible floats (Orbax compresses constant arrays to nothing)."""
  big = np.random.default_rng(step).standard_normal(500_000, np.float32)
  return {'big': jnp.asarray(big), 'step': jnp.int32(step)}


@contextlib.contextmanager
def _file_size_limit(limit: int):
  """Writes past `limit` bytes fail with EFBIG (Python ignores SIGXFSZ), as on a full disk;
  needs no privileges, unlike a full file system."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@contextlib.contextmanager
def _full_tmpfs(directory: pathlib.Path):
  """A 3 MB tmpfs at `directory` (root only): the second 2 MB checkpoint gets ENOSPC."""
  directory.mkdir()
  if os.geteuid() != 0 or subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', str(directory)],
      capture_output=True).returncode:
    pytest.skip('mounting a tmpfs needs root')
  try:
    yield
  finally:
    subprocess.run(['umount', '-l', str(directory)], check=True)


@pytest.mark.parametrize('disk', ['file size limit', 'full tmpfs', 'read-only directory'])
def test_failed_save_is_one_line_error_and_keeps_the_previous_checkpoint(tmp_path, disk):
  directory = tmp_path / 'ckpt'
  mount = _full_tmpfs(directory) if disk == 'full tmpfs' else contextlib.nullcontext()
  with mount:
    ckpt = Checkpointer(str(directory), keep=1)  # keep=1: a failed save must not evict step 1
    ckpt.save(1, _random_state(1), {'position': 1})
    ckpt.wait()
    if disk == 'read-only directory':
      if os.geteuid() == 0:
        pytest.skip('root writes to read-only directories')
      directory.chmod(0o555)
    limit = _file_size_limit(100_000) if disk == 'file size limit' else contextlib.nullcontext()
    with limit, pytest.raises(CheckpointError) as error:
      ckpt.save(2, _random_state(2), {'position': 2})
      ckpt.wait()
    directory.chmod(0o755)
    ckpt.close()  # the failure was reported once; closing does not raise it again
    message = str(error.value)
    assert '\n' not in message
    assert f'could not write checkpoint 2 in {directory}' in message
    assert 'the newest complete one, step 1, is kept' in message
    assert 'Free space or fix permissions' in message

    ckpt = Checkpointer(str(directory), keep=1)
    assert ckpt.latest_step() == 1
    restored, data_state = ckpt.restore(_abstract(_random_state(0)))
    ckpt.close()
    assert data_state == {'position': 1}
    np.testing.assert_array_equal(np.asarray(restored['big']),
                                  np.asarray(_random_state(1)['big']))


@pytest.mark.parametrize('tmp_name', [
    '3.orbax-checkpoint-tmp',  # the name this Orbax version uses
    '3.orbax-checkpoint-tmp-1700000000',  # older versions add a timestamp
])
def test_unfinished_tmp_step_dir_is_ignored(tmp_path, tmp_name):
  _save(tmp_path, steps=[1, 2])
  # Even a complete copy does not count until Orbax renames it.
  shutil.copytree(tmp_path / '2', tmp_path / tmp_name)
  ckpt = Checkpointer(str(tmp_path), keep=3)
  assert ckpt.latest_step() == 2
  restored, data_state = ckpt.restore(_abstract(_state()))
  ckpt.close()
  assert int(restored['step']) == 2 and data_state['position'] == 2


_SAVE_FOREVER = textwrap.dedent("""
    import sys
    import jax.numpy as jnp
    import numpy as np
    from research.checkpointing import Checkpointer

    # 64 MB per step; step 3 is incompressible, so writing it takes a while.
    size = 16_000_000
    ckpt = Checkpointer(sys.argv[1], keep=2)
    for step in range(1, 1000):
      big = (np.random.default_rng(step).standard_normal(size, np.float32)
             if step == 3 else np.full(size, step, np.float32))
      ckpt.save(step, {'big': jnp.asarray(big), 'step': jnp.int32(step)},
                {'step': step})
      print(f'saving {step}', flush=True)  # the write is now in flight
""")


def test_sigkill_mid_save_leaves_a_restorable_checkpoint(tmp_path):
  child = subprocess.Popen(
      [sys.executable, '-c', _SAVE_FOREVER, str(tmp_path)],
      cwd=_REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  try:
    for line in child.stdout:
      if line.strip() == 'saving 3':
        time.sleep(0.1)  # let Orbax create the step's temporary directory
        child.send_signal(signal.SIGKILL)
        break
  finally:
    child.kill()
    child.wait()
  assert child.returncode == -signal.SIGKILL
  leftovers = [p for p in os.listdir(tmp_path) if '.orbax-checkpoint-tmp' in p]
  assert leftovers, f'the kill did not hit a save: {os.listdir(tmp_path)}'

  ckpt = Checkpointer(str(tmp_path), keep=2)
  assert ckpt.latest_step() == 2, os.listdir(tmp_path)
  abstract = _abstract({'big': jnp.zeros(16_000_000), 'step': jnp.int32(0)})
  restored, data_state = ckpt.restore(abstract)
  ckpt.close()
  assert int(restored['step']) == 2 and data_state == {'step': 2}
  np.testing.assert_array_equal(np.asarray(restored['big']), 2.0)


@pytest.mark.slow
def test_full_disk_mid_run_is_one_line_error_and_the_run_exits(small_corpus, tmp_path):
  """A real run whose checkpoint writes start failing (as on a full disk) stops with one line,
  keeps its last complete checkpoint and exits instead of hanging on Orbax's threads."""
  run = LiveRun('--config=configs/gpt.py:variant=tiny', f'--workdir={tmp_path}',
                *tiny_overrides(small_corpus, 1000), '--config.checkpoint.every=4')
  assert run.wait_for(lambda: (tmp_path / 'checkpoints' / '4').is_dir()), run.text()
  # From now on no file may grow past 1 MB; a checkpoint's arrays are ~4 MB.
  resource.prlimit(run.process.pid, resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))
  assert run.finish(timeout=120) == 2, run.text()
  assert not [l for l in run.stderr if 'Traceback' in l or l.startswith('E1')], run.stderr
  [error] = [l for l in run.stderr if l.startswith('error:')]
  assert error.startswith(f'error: could not write checkpoint 8 in {tmp_path}/checkpoints ('), error
  assert 'File too large' in error and 'the newest complete one, step 4, is kept' in error
  assert Checkpointer(str(tmp_path / 'checkpoints'), keep=3).latest_step() == 4
