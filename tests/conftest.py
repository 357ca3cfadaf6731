"""Shared fixtures: a small real corpus (the first Austen chapters) and tiny run configs."""
import gzip
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: long end-to-end test; `make test-all` runs it, '
                          '`make test` (CI) skips it')


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
