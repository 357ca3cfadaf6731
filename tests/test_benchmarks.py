"""The GPU benchmark script runs end to end (tiny shapes on whatever device is here)."""
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_gpu_benchmark_smoke():
  result = subprocess.run([sys.executable, '-m', 'research.benchmarks.gpu', '--smoke',
                           '--nohf'], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  train = [l for l in lines if l.startswith(('gpt-tiny', 'bert-tiny'))]
  assert len(train) == 2 and all(l.endswith('%') for l in train), result.stdout
  decode = [l.split() for l in lines[lines.index(next(l for l in lines if l.startswith('decoding'))) + 2:]]
  assert [row[0] for row in decode] == ['1', '2'] and all(float(row[1]) > 0 for row in decode)
