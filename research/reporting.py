"""Observability: progress lines, metrics.jsonl, TensorBoard and run info.

Every record goes to three places: a one-line absl log, one JSON object per
line in `<workdir>/metrics.jsonl` (easy to load with pandas or `jq`), and
TensorBoard event files in `<workdir>/tensorboard/` (tensorboardX; no
TensorFlow). Only the chief process (jax.process_index() == 0) writes.

`Reporter.train` is called after *every* step with the step's metrics still
on device; it fetches them to the host only every `log_every` steps, so the
loop does not wait for each step to finish (JAX dispatches asynchronously).
Throughput is measured between two logged steps and therefore includes
everything the loop does in between (data loading, checkpoint saves), except:
  - compilation: the clock starts when the first step after start or resume
    has *finished*, so the first interval is one step shorter;
  - evaluation: `eval` restarts the clock the same way.
"""

from collections.abc import Callable, Mapping, Sequence
import datetime
import importlib.metadata
import json
import logging as python_logging
import math
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
from tensorboardX import SummaryWriter

from research import flops

_PACKAGES = (
    'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain',
    'sentencepiece', 'numpy',
)


class Reporter:
  """Logs training and evaluation metrics with throughput, MFU and ETA.

  Args:
    workdir: run directory; receives metrics.jsonl and tensorboard/.
    total_steps: last step of the run (for the ETA and the final log).
    log_every: steps between logged training records.
    flops_per_step: model FLOPs of one step over the global batch, see
      `flops.transformer_flops_per_token`; None omits MFU.
    peak_flops: peak FLOP/s of one device, see `flops.peak_flops`; None omits
      MFU.
    tokens_per_step: tokens in one global batch.
    num_devices: devices one step runs on (MFU divides by their total peak);
      default: all of them, `jax.device_count()`.
    start_step: step the run (re)starts from; TensorBoard hides events logged
      after it by the interrupted run, so curves don't overlap. metrics.jsonl
      is append-only: after a resume, keep the last record of each step.
    is_chief: whether this process writes; the others do nothing.
    clock: seconds as a float; injectable for tests.
  """

  def __init__(
      self,
      workdir: str,
      *,
      total_steps: int,
      log_every: int,
      flops_per_step: float | None,
      peak_flops: float | None,
      tokens_per_step: int,
      num_devices: int | None = None,
      start_step: int = 0,
      is_chief: bool = True,
      clock: Callable[[], float] = time.perf_counter,
  ):
    self._total_steps = total_steps
    self._log_every = log_every
    self._flops_per_step = flops_per_step
    self._peak_flops = peak_flops
    self._tokens_per_step = tokens_per_step
    self._num_devices = num_devices or jax.device_count()
    self._is_chief = is_chief
    self._clock = clock
    # (step, time) the current throughput interval started at; None until
    # a step has finished after (re)start or evaluation.
    self._interval_start: tuple[int, float] | None = None
    if is_chief:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, 'metrics.jsonl')
      drop_partial_line(path)
      self._jsonl = open(path, 'a')
      self._writer = SummaryWriter(
          os.path.join(workdir, 'tensorboard'),
          purge_step=start_step or None,
      )

  def train(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Records the metrics of training step `step` (1-based: updates done).

    Call it every step; metrics may be device arrays. Keys are prefixed with
    'train/' unless they already contain a '/'.
    """
    if not self._is_chief:
      return
    if self._interval_start is None:
      # The first step after (re)start or eval includes compilation or eval
      # time; start the clock when it has finished.
      jax.block_until_ready(metrics)
      self._interval_start = (step, self._clock())
    if step % self._log_every and step != self._total_steps:
      return
    values = _to_floats(metrics, prefix='train')  # waits for the step
    now = self._clock()
    start_step, start_time = self._interval_start
    self._interval_start = (step, now)
    perf = {}
    if step > start_step and now > start_time:
      steps_per_sec = (step - start_step) / (now - start_time)
      perf['perf/steps_per_sec'] = steps_per_sec
      perf['perf/tokens_per_sec'] = steps_per_sec * self._tokens_per_step
      if self._flops_per_step and self._peak_flops:
        perf['perf/mfu'] = flops.mfu(
            self._flops_per_step,
            1 / steps_per_sec,
            self._peak_flops,
            self._num_devices,
        )
      perf['perf/eta_s'] = (self._total_steps - step) / steps_per_sec
    self._write(step, {**values, **perf})
    logging.info(
        'step %d/%d | %s', step, self._total_steps, _progress(values, perf)
    )

  def eval(
      self, step: int, metrics: Mapping[str, Any], prefix: str = 'eval'
  ) -> None:
    """Records evaluation metrics under `prefix/`; restarts the step clock."""
    self._interval_start = None
    if not self._is_chief:
      return
    values = _to_floats(metrics, prefix=prefix)
    self._write(step, values)
    logging.info('%s at step %d | %s', prefix, step, _progress(values, {}))

  def log_event(self, step: int, **values: Any) -> None:
    """Appends a free-form record, e.g. `log_event(0, event='resumed')`."""
    if not self._is_chief:
      return
    # numpy/JAX scalars and small arrays become plain JSON numbers and lists.
    line = json.dumps({'step': step, **values},
                      default=lambda x: np.asarray(x).tolist())
    self._jsonl.write(line + '\n')
    self._jsonl.flush()
    logging.info('step %d | %s', step, values)

  def close(self) -> None:
    if self._is_chief:
      self._writer.close()
      self._jsonl.close()

  def _write(self, step: int, scalars: Mapping[str, float]) -> None:
    # Strict JSON has no NaN/Infinity; null keeps the file loadable anywhere.
    record = {k: v if math.isfinite(v) else None for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': step, **record}) + '\n')
    self._jsonl.flush()
    for tag, value in scalars.items():
      self._writer.add_scalar(tag, value, step)
    self._writer.flush()


def drop_partial_line(path: str) -> None:
  """Cuts a record a kill left half-written at the end of an append-only file, so the next
  record starts on a line of its own (the killed step is redone and logged again)."""
  if not os.path.exists(path):
    return
  with open(path, 'rb+') as f:
    data = f.read()
    if data and not data.endswith(b'\n'):
      f.truncate(data.rfind(b'\n') + 1)


def _to_floats(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
  host = jax.device_get(dict(metrics))
  return {
      (k if '/' in k else f'{prefix}/{k}'): float(np.asarray(v))
      for k, v in host.items()
  }


def _progress(values: Mapping[str, float], perf: Mapping[str, float]) -> str:
  parts = [f'{k} {v:.4g}' for k, v in values.items()]
  if 'perf/steps_per_sec' in perf:
    parts.append(f'{perf["perf/steps_per_sec"]:.3g} steps/s')
    parts.append(f'{_si(perf["perf/tokens_per_sec"])} tok/s')
  if 'perf/mfu' in perf:
    parts.append(f'MFU {100 * perf["perf/mfu"]:.1f}%')
  if 'perf/eta_s' in perf:
    parts.append(f'ETA {_duration(perf["perf/eta_s"])}')
  return ' | '.join(parts)


def _si(x: float) -> str:
  for factor, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if x >= factor:
      return f'{x / factor:.1f}{suffix}'
  return f'{x:.0f}'


def _duration(seconds: float) -> str:
  s = round(seconds)
  h, m, s = s // 3600, s % 3600 // 60, s % 60
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s' if m else f'{s}s'


def write_run_info(
    workdir: str,
    config: ml_collections.ConfigDict,
    argv: Sequence[str] | None = None,
) -> None:
  """Writes the resolved config and what ran it to `workdir` (chief only).

  `config.json` is the resolved config; `run_info.json` has the git revision
  of the checkout holding this package (with a dirty flag), the Python,
  package and JAX device versions, the command line and the UTC start time.
  Both are overwritten on resume, so they describe the latest launch.
  """
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  devices = jax.devices()
  info = {
      'start_time_utc': datetime.datetime.now(datetime.timezone.utc)
      .isoformat(timespec='seconds'),
      'command': list(sys.argv if argv is None else argv),
      'git': _git_revision(pathlib.Path(__file__).parent),
      'python': platform.python_version(),
      'packages': {name: _version(name) for name in _PACKAGES},
      'jax': {
          'backend': jax.default_backend(),
          'device_kind': devices[0].device_kind,
          'device_count': len(devices),
          'local_device_count': jax.local_device_count(),
          'process_count': jax.process_count(),
      },
  }
  with open(os.path.join(workdir, 'run_info.json'), 'w') as f:
    json.dump(info, f, indent=2)
    f.write('\n')


def _version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _git_revision(directory: pathlib.Path) -> dict[str, Any]:
  """{'revision': sha or 'unknown', 'dirty': bool or None}."""

  def git(*args: str) -> str:
    return subprocess.run(
        ['git', '-C', str(directory), *args],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout.strip()

  try:
    revision = git('rev-parse', 'HEAD')
    dirty = bool(git('status', '--porcelain', '--untracked-files=no'))
  except (OSError, subprocess.SubprocessError):
    return {'revision': 'unknown', 'dirty': None}
  return {'revision': revision, 'dirty': dirty}


class _LibraryInfoFilter(python_logging.Filter):
  """Drops INFO records of installed libraries (Orbax logs every file it writes), and Orbax's
  error reports with their tracebacks (from its background threads, and asyncio's "never
  retrieved" copies): every Orbax failure reaches research/checkpointing.py as an exception,
  which it turns into one line naming the step and what to do."""

  def filter(self, record):
    if '/site-packages/' not in record.pathname:
      return True
    if record.levelno >= python_logging.ERROR and (
        '/orbax/' in record.pathname
        or (record.name == 'asyncio' and 'orbax' in record.getMessage())):
      return False
    return record.levelno >= python_logging.WARNING


class _PlainInfoFormatter(python_logging.Formatter):
  """INFO lines as their bare message (`step 50/600 | train/loss ...`); warnings and errors
  keep absl's prefix (level, time, file:line), which says where they came from."""

  def __init__(self, detailed: python_logging.Formatter):
    super().__init__()
    self._detailed = detailed

  def format(self, record):
    if record.levelno == python_logging.INFO:
      return record.getMessage()
    return self._detailed.format(record)


def quiet_library_logs() -> None:
  """Keeps the console to this project's progress lines, printed plainly, plus every library
  warning/error (except Orbax's errors, see `_LibraryInfoFilter`; metrics.jsonl and
  TensorBoard keep every value)."""
  handler = logging.get_absl_handler()
  handler.addFilter(_LibraryInfoFilter())
  python_handler = handler.python_handler
  python_handler.setFormatter(_PlainInfoFormatter(python_handler.formatter
                                                  or logging.PythonFormatter()))
