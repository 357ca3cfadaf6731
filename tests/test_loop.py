"""The step loop left unattended: non-finite updates skipped and a diverged run stopped, and
SIGTERM / SIGINT turned into a saved checkpoint and exit status 143 / 130 (one or two
processes). tests/test_chaos.py kills whole runs (SIGTERM and a second signal included) and
checks they resume exactly; this file tests the mechanisms."""
import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import gpt as gpt_config
from research import checkpointing, loop, reporting, sharding, steps, train
from research.state import TrainState
from research.models import task_model
from research.tasks import losses
from tests.conftest import LiveRun, tiny_overrides
from tests.test_finetune import CFG
from tests.test_train import clm_batch, configure, read_metrics, tiny_setup


def _same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_nonfinite_pretraining_step_changes_nothing_but_the_step():
  init, step, mesh = tiny_setup()  # no dropout: the step number does not change the math
  good = [sharding.global_batch(clm_batch(seed), mesh) for seed in (0, 1)]
  bad = clm_batch(2)
  bad['weights'][0, 3] = np.nan  # a NaN in the batch makes the loss and gradients NaN
  before, metrics = step(init(), good[0])
  assert float(metrics['skipped']) == 0.0
  after, metrics = step(before, sharding.global_batch(bad, mesh))
  assert float(metrics['skipped']) == 1.0 and np.isnan(float(metrics['loss']))
  assert int(after.step) == int(before.step) + 1  # the batch was consumed
  _same((after.params, after.opt_state), (before.params, before.opt_state))  # Adam count too
  # Training goes on exactly as if the bad batch had never come.
  _same(step(after, good[1])[0].params, step(before, good[1])[0].params)


def test_nonfinite_finetuning_step_changes_nothing_but_the_step():
  model = task_model.TaskModel(CFG, 'classification', 2)
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, 'unbox') else x,
                        task_model.init_params(model, 8, 1, jax.random.PRNGKey(0)),
                        is_leaf=lambda x: hasattr(x, 'unbox'))
  tx = optax.adam(1e-2)
  state = TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                     rng=jax.random.key_data(jax.random.key(1)))
  ids = np.ones((2, 1, 8), np.int32)
  batch = {'input_ids': ids, 'segment_ids': np.zeros_like(ids), 'attention_mask': np.ones_like(ids),
           'labels': np.array([0, 1], np.int32), 'label_weights': np.array([1.0, np.inf])}
  step = jax.jit(lambda s, b: steps.train_step(s, b, model=model, tx=tx,
                                               objective=losses.TaskObjective('classification')))
  after, metrics = step(state, batch)
  assert float(metrics['skipped']) == 1.0
  assert int(after.step) == 1
  _same((after.params, after.opt_state), (state.params, state.opt_state))
  batch['label_weights'] = np.array([1.0, 1.0])
  after, metrics = step(state, batch)
  assert float(metrics['skipped']) == 0.0
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after.params),
                                                      jax.tree.leaves(state.params)))


class _Batches:
  """A data iterator over fixed CLM batches (NaN weights in the steps listed), resumable."""

  def __init__(self, nan_steps=()):
    self.index, self.nan_steps = 0, set(nan_steps)

  def __next__(self):
    self.index += 1
    batch = clm_batch(self.index)
    if self.index in self.nan_steps:
      batch['weights'][0, 0] = np.nan
    return batch

  def get_state(self):
    return {'next_index': self.index}


def _run_loop(tmp_path, batches, total_steps=12, on_step=lambda step: None, max_skipped=5):
  init, step, mesh = tiny_setup()

  def train_step(state, batch):
    on_step(int(state.step) + 1)
    return step(state, batch)

  reporter = reporting.Reporter(str(tmp_path), total_steps=total_steps, log_every=1,
                                flops_per_step=None, peak_flops=None, tokens_per_step=0)
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'checkpoints'), keep=10)
  return loop.run(init(), train_step, batches, mesh, total_steps=total_steps, reporter=reporter,
                  ckpt=ckpt, checkpoint_every=4, after_step=lambda done, state: None,
                  max_skipped_steps=max_skipped)


def test_skips_in_a_row_stop_the_run_naming_the_first_bad_batch(tmp_path):
  # Steps 2-3 are skipped, step 4 is fine (the count starts again), 6-8 make 3 in a row.
  with pytest.raises(loop.Diverged) as error:
    _run_loop(tmp_path, _Batches(nan_steps={2, 3, 6, 7, 8, 9}), max_skipped=3)
  assert str(error.value).startswith(
      'training stopped at step 8: the loss or gradient norm was not finite for 3 steps in a '
      'row (6-8; train.max_skipped_steps=3), so their updates were skipped; step 6\'s batch '
      'starts at data position {"next_index": 5}')
  skipped = {r['step']: r['train/skipped'] for r in read_metrics(tmp_path) if 'train/skipped' in r}
  assert [s for s, flag in skipped.items() if flag] == [2, 3, 6, 7, 8]
  events = [r for r in read_metrics(tmp_path) if r.get('event') == 'skipped']
  assert [(r['step'], r['data_position']) for r in events] == [
      (s, {'next_index': s - 1}) for s in (2, 3, 6, 7, 8)]
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4', '8']  # both committed


def test_sigint_stops_after_the_step_with_a_checkpoint_and_status_130(tmp_path):
  def interrupt(step):
    if step == 6:
      os.kill(os.getpid(), signal.SIGINT)  # arrives while step 6 runs
  previous = signal.getsignal(signal.SIGINT)
  with pytest.raises(loop.Preempted) as stopped:
    _run_loop(tmp_path, _Batches(), on_step=interrupt)
  assert stopped.value.exit_status == 130 and stopped.value.step == 6
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['4', '6']
  assert read_metrics(tmp_path)[-1] == {'step': 6, 'event': 'preempted', 'signal': 'SIGINT'}
  assert signal.getsignal(signal.SIGINT) is previous  # handlers restored


def _gpt(workdir, corpus, steps, *extra):
  return ['--config=configs/gpt.py:variant=tiny', f'--workdir={workdir}',
          *tiny_overrides(corpus, steps), *extra]


def test_diverged_run_stops_with_one_line_and_finite_checkpoints(small_corpus, tmp_path):
  config = configure(gpt_config.get_config('variant=tiny'), small_corpus, 30)
  with config.unlocked():
    # A learning rate of 1e30 makes the weights huge in one update; the next loss is NaN.
    config.optim.learning_rate = 1e30
    config.checkpoint.every = 2
  with pytest.raises(loop.Diverged) as error:
    train.train_and_evaluate(config, str(tmp_path))
  assert str(error.value) == (
      'training stopped at step 7: the loss or gradient norm was not finite for 5 steps in a '
      'row (3-7; train.max_skipped_steps=5), so their updates were skipped; step 3\'s batch '
      'starts at data position {"next_index": 2}; the newest checkpoint holds finite '
      'parameters: lower optim.learning_rate or inspect that data, then re-run')
  records = read_metrics(tmp_path)
  assert [r['train/skipped'] for r in records if 'train/skipped' in r] == [0, 0, 1, 1, 1, 1, 1]
  saved = sorted(int(n) for n in os.listdir(tmp_path / 'checkpoints') if n.isdigit())
  assert saved and max(saved) <= 7
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'checkpoints'), keep=3)
  for step in saved:  # saved while skipping: still the finite parameters of step 2
    state, _ = ckpt.restore(_abstract(ckpt, step), step=step)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))
  ckpt.close()


def _abstract(ckpt, step):
  """The saved tree's shapes as the restore target (1 device: no layout to plan)."""
  tree = ckpt._manager.item_metadata(step)['state'].tree  # pylint: disable=protected-access
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(small_corpus, tmp_path):
  """The signal reaches process 1 only; both save the same step together and exit 143."""
  port = 21000 + os.getpid() % 20000
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  runs = [LiveRun(*_gpt(tmp_path, small_corpus, 1000), f'--coordinator_address=127.0.0.1:{port}',
                  '--num_processes=2', f'--process_id={i}', env=env) for i in range(2)]
  assert runs[0].wait_for(lambda: (runs[0].last_step() or 0) >= 3)  # process 0 logs steps
  runs[1].process.send_signal(signal.SIGTERM)
  assert [r.finish() for r in runs] == [143, 143], runs[0].text() + runs[1].text()
  lines = [[l for l in r.stderr if l.startswith('preempted:')] for r in runs]
  assert lines[0] == lines[1] and len(lines[0]) == 1, lines
  step = runs[0].last_step()
  assert f'after step {step};' in lines[0][0]
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == [str(step)]
  data = json.loads((tmp_path / 'checkpoints' / str(step) / 'data' / 'metadata').read_text())
  assert data == {'next_index': step}
