"""Tests for research.reporting: metrics.jsonl, TensorBoard, timing, run info."""

import json
import pathlib
import struct
import subprocess

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from research import reporting


class FakeClock:
  """A clock the test advances by hand."""

  def __init__(self):
    self.now = 1000.0

  def __call__(self) -> float:
    return self.now


def _records(workdir) -> list[dict]:
  lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines]


def _tensorboard_scalars(workdir) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} read back from the TFRecord event files."""
  scalars = {}
  for path in (pathlib.Path(workdir) / 'tensorboard').glob('events.out.tfevents.*'):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      # TFRecord: uint64 length, uint32 length crc, payload, uint32 payload crc.
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


def _reporter(workdir, clock, **overrides):
  kwargs = dict(total_steps=10, log_every=2, flops_per_step=5e11,
                peak_flops=1e12, tokens_per_step=1000, num_devices=1,
                clock=clock)
  return reporting.Reporter(str(workdir), **{**kwargs, **overrides})


def test_train_records_throughput_mfu_and_eta(tmp_path):
  clock = FakeClock()
  reporter = _reporter(tmp_path, clock)
  # Step 1 compiles; the clock starts when it has finished.
  clock.now += 30.0
  reporter.train(1, {'loss': jnp.float32(5.0), 'learning_rate': 1e-4})
  clock.now += 0.5
  reporter.train(2, {'loss': jnp.float32(4.0), 'learning_rate': 2e-4})
  clock.now += 0.5
  reporter.train(3, {'loss': jnp.float32(3.5), 'learning_rate': 3e-4})
  clock.now += 0.5
  reporter.train(4, {'loss': jnp.float32(3.0), 'learning_rate': 4e-4})
  reporter.close()

  records = _records(tmp_path)
  assert [r['step'] for r in records] == [2, 4]
  assert records[0] == pytest.approx({
      'step': 2, 'train/loss': 4.0, 'train/learning_rate': 2e-4,
      'perf/steps_per_sec': 2.0, 'perf/tokens_per_sec': 2000.0,
      'perf/mfu': 0.5 * 2.0,  # 5e11 FLOPs/step * 2 steps/s / 1e12 FLOP/s
      'perf/eta_s': 8 / 2.0,
  })
  assert records[1]['perf/steps_per_sec'] == pytest.approx(2.0)
  assert records[1]['perf/eta_s'] == pytest.approx(3.0)

  scalars = _tensorboard_scalars(tmp_path)
  assert scalars['train/loss'] == {2: 4.0, 4: 3.0}
  assert scalars['perf/mfu'][4] == pytest.approx(1.0)


def test_progress_line(tmp_path, caplog):
  clock = FakeClock()
  reporter = _reporter(tmp_path, clock, total_steps=1000, log_every=200,
                       tokens_per_step=4096)
  reporter.train(1, {'loss': 9.0})
  clock.now += 199 / 5.3
  with caplog.at_level('INFO'):
    reporter.train(200, {'loss': 4.8123})
  reporter.close()
  assert ('step 200/1000 | train/loss 4.812 | 5.3 steps/s | 21.7k tok/s | '
          'MFU 265.0% | ETA 2m31s') in caplog.text


def test_eval_restarts_the_step_clock(tmp_path):
  clock = FakeClock()
  reporter = _reporter(tmp_path, clock, total_steps=6)
  reporter.train(1, {'loss': 1.0})
  clock.now += 1.0
  reporter.train(2, {'loss': 1.0})
  clock.now += 100.0  # evaluation
  reporter.eval(2, {'loss': jnp.float32(2.5), 'accuracy': 0.25})
  reporter.train(3, {'loss': 1.0})  # clock restarts here
  clock.now += 0.25
  reporter.train(4, {'loss': 1.0})
  clock.now += 0.25
  reporter.train(5, {'loss': 1.0})
  reporter.train(6, {'loss': 1.0})  # the last step is always logged
  reporter.close()

  records = _records(tmp_path)
  assert records[1] == {'step': 2, 'eval/loss': 2.5, 'eval/accuracy': 0.25}
  assert records[2]['step'] == 4
  assert records[2]['perf/steps_per_sec'] == pytest.approx(4.0)
  assert records[3]['step'] == 6
  assert _tensorboard_scalars(tmp_path)['eval/loss'] == {2: 2.5}


def test_first_logged_step_has_no_throughput_and_nan_is_null(tmp_path):
  reporter = _reporter(tmp_path, FakeClock(), log_every=1)
  reporter.train(1, {'loss': float('nan')})
  reporter.log_event(1, event='resumed', params=np.int64(7), rate=jnp.float32(0.5))
  reporter.close()
  assert _records(tmp_path) == [
      {'step': 1, 'train/loss': None},
      {'step': 1, 'event': 'resumed', 'params': 7, 'rate': 0.5}]


def test_without_flops_there_is_no_mfu(tmp_path):
  clock = FakeClock()
  reporter = _reporter(tmp_path, clock, flops_per_step=None)
  reporter.train(1, {'loss': 1.0})
  clock.now += 1.0
  reporter.train(2, {'loss': 1.0})
  reporter.close()
  assert 'perf/mfu' not in _records(tmp_path)[0]
  assert 'perf/tokens_per_sec' in _records(tmp_path)[0]


def test_non_chief_writes_nothing(tmp_path):
  reporter = _reporter(tmp_path / 'run', FakeClock(), is_chief=False)
  reporter.train(2, {'loss': 1.0})
  reporter.eval(2, {'loss': 1.0})
  reporter.log_event(2, event='x')
  reporter.close()
  assert not (tmp_path / 'run').exists()


def test_write_run_info(tmp_path):
  config = ml_collections.ConfigDict({'model': {'d_model': 128},
                                      'optim': {'learning_rate': 1e-3}})
  reporting.write_run_info(str(tmp_path), config, argv=['main.py', '--x=1'])
  assert json.loads((tmp_path / 'config.json').read_text()) == config.to_dict()
  info = json.loads((tmp_path / 'run_info.json').read_text())
  assert info['command'] == ['main.py', '--x=1']
  assert info['packages']['jax'] and info['packages']['orbax-checkpoint']
  assert info['jax']['backend'] and info['jax']['device_count'] >= 1
  assert info['start_time_utc'].endswith('+00:00')
  head = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True,
                        text=True, cwd=pathlib.Path(reporting.__file__).parent)
  expected = head.stdout.strip() if head.returncode == 0 else 'unknown'
  assert info['git']['revision'] == expected
