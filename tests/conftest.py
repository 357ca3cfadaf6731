"""Shared fixtures: a small real corpus (the first Austen chapters) and tiny run configs."""
import gzip
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: long end-to-end test; `make test-all` runs it, '
                          '`make test` (CI) skips it')
  # One persistent XLA cache for the session (inherited by the CLI runs the tests start): the
  # many runs of the same tiny configs load their compiled steps instead of compiling them
  # again. A cached executable is the one compiled, so no result changes.
  if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    config.xla_cache_dir = tempfile.mkdtemp(prefix='xla_cache_')
    os.environ['JAX_COMPILATION_CACHE_DIR'] = config.xla_cache_dir
    os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'


def pytest_unconfigure(config):
  if getattr(config, 'xla_cache_dir', None):
    shutil.rmtree(config.xla_cache_dir, ignore_errors=True)


@pytest.fixture(scope='session')
def small_corpus(tmp_path_factory) -> str:
  """40 chapters of Sense and Sensibility in BERT's format: fast to tokenize, still real text."""
  from research.data import corpus
  text = gzip.open(corpus.default_corpus_path(), 'rt', encoding='utf-8').read()
  chapters = text.split('\n\n')[:40]
  path = tmp_path_factory.mktemp('corpus') / 'austen40.txt'
  path.write_text('\n\n'.join(chapters) + '\n', encoding='utf-8')
  return str(path)


def tiny_overrides(corpus: str, steps: int = 2) -> list[str]:
  """Command-line overrides that make any pretraining config run in seconds."""
  return [f'--config.data.corpus={corpus}', f'--config.train.steps={steps}',
          '--config.data.tokenizer.vocab_size=600', '--config.data.max_seq_len=32',
          '--config.train.batch_size=8', '--config.train.eval_batch_size=8',
          '--config.train.eval_batches=2', '--config.train.log_every=1',
          '--config.checkpoint.every=1000', '--config.optim.warmup_steps=2']


def run_main(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  """`python -m research.main ...` from the repository root."""
  return subprocess.run([sys.executable, '-m', 'research.main', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600,
                        env={**os.environ, **(env or {})})


class LiveRun:
  """A `python -m research.main ...` child whose output lines are collected as they arrive,
  so a test can act at a chosen moment (send a signal after step N, during a save, ...)."""

  STEP = re.compile(r'^step (\d+)/\d+ \|', re.MULTILINE)
  EVAL = re.compile(r'^\w+ at step (\d+) \|', re.MULTILINE)
  RESUMED = re.compile(r'resumed (?:fine-tuning )?from step (\d+) of')

  def __init__(self, *args: str, env: dict | None = None):
    self.started = time.monotonic()
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'research.main', *args], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    self.stdout, self.stderr = [], []
    self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                     for stream, lines in ((self.process.stdout, self.stdout),
                                           (self.process.stderr, self.stderr))]
    for reader in self._readers:
      reader.start()

  @staticmethod
  def _read(stream, lines: list[str]) -> None:
    for line in stream:
      lines.append(line.rstrip('\n'))

  def elapsed(self) -> float:
    return time.monotonic() - self.started

  def last_step(self) -> int | None:
    """The newest step logged (log_every=1), or None before the first."""
    for line in reversed(self.stderr):
      match = self.STEP.search(line)
      if match:
        return int(match.group(1))
    return None

  def evaluated(self, step: int) -> bool:
    return any((m := self.EVAL.search(line)) and int(m.group(1)) == step for line in self.stderr)

  def resumed_from(self) -> int | None:
    for line in self.stderr:
      match = self.RESUMED.search(line)
      if match:
        return int(match.group(1))
    return None

  def wait_for(self, condition, timeout: float = 300, poll: float = 0.001) -> bool:
    """Polls `condition()` until it holds (True) or the child exits first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if condition():
        return True
      if self.process.poll() is not None:
        return condition()
      time.sleep(poll)
    raise TimeoutError(f'condition not met in {timeout}s; stderr: {self.stderr[-5:]}')

  def finish(self, timeout: float = 300) -> int:
    self.process.wait(timeout)
    for reader in self._readers:
      reader.join(timeout)
    return self.process.returncode

  def text(self) -> str:
    return '\n'.join(self.stderr[-40:])
