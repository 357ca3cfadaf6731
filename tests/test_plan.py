"""research.plan: the train step compiled for a simulated mesh from shapes alone, its bytes per
device beside the analytic estimate, and the search for the cheapest mesh that fits."""
import subprocess
import sys

import pytest

from configs import gpt as gpt_config
from research import models, plan
from research.models.config import ModelConfig
from tests.conftest import REPO


def run_plan(*args):
  return subprocess.run([sys.executable, '-m', 'research.plan', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def row(stdout: str, name: str) -> list[str]:
  return next(l for l in stdout.splitlines() if l.strip().startswith(name)).split()


def test_plan_of_a_sharded_step_without_weights():
  """GPT-tiny's step on data 2 x fsdp 2 simulated devices: parameters and Adam state per
  device are half of the whole (fsdp 2 splits them), as laid out and as estimated; the
  compiled peak and compile time are reported; 1 GB fits."""
  result = run_plan('--config=configs/gpt.py:variant=tiny', '--devices=4', '--device_memory=1G',
                    '--config.mesh.fsdp=2', '--config.data.max_seq_len=64',
                    '--config.model.vocab_size=512')
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert 'mesh data 2 x fsdp 2 x tensor 1, remat none' in out, out
  config = gpt_config.get_config('variant=tiny')
  with config.unlocked():
    config.model.vocab_size = 512
  n = models.param_count(ModelConfig.from_config(config.model))
  params = row(out, 'parameters')
  # Every dimension fsdp splits is even here, so both columns are exactly 4 bytes x n / 2.
  assert params[-4:] == [f'{4 * n / 2 / 1e9:.2f}', 'GB', f'{4 * n / 2 / 1e9:.2f}', 'GB'], params
  assert float(row(out, 'optimizer')[-4]) == pytest.approx(2 * float(params[-4]), abs=0.01)
  assert float(row(out, 'peak')[-4]) > 0
  assert 'fits 0.9 GB: yes' in out and 'compile' in out


def test_bad_mesh_and_memory_are_one_line_errors():
  result = run_plan('--config=configs/gpt.py:variant=tiny', '--devices=4', '--config.mesh.tensor=3')
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert result.returncode == 2 and len(errors) == 1, result.stderr
  assert 'tensor=3' in errors[0] and 'Traceback' not in result.stderr
  result = run_plan('--config=configs/gpt.py:variant=tiny', '--device_memory=lots')
  assert result.returncode == 2 and 'lots' in result.stderr


def test_parse_bytes():
  assert plan.parse_bytes('80G') == plan.parse_bytes('80GB') == 80e9
  assert plan.parse_bytes('16GiB') == 16 * 2 ** 30
  assert plan.parse_bytes('512M') == 512e6
  with pytest.raises(ValueError, match='device_memory'):
    plan.parse_bytes('80 gigs')


def test_recommend_takes_the_cheapest_point_that_fits(capsys):
  """With a stand-in for compilation whose peak falls with FSDP, tensor size and
  recomputation: no tensor parallelism while something fits without it, the least
  recomputation that fits, then the fewest FSDP shards; a (tensor, remat) pair whose largest
  FSDP size does not fit is given up after that one compilation."""
  config = gpt_config.get_config('variant=gpt2-124m')
  cfg = ModelConfig.from_config(config.model)
  remat_factor = {'none': 8, 'dots_saveable': 6, 'dots_with_no_batch_dims_saveable': 4,
                  'full': 2}
  compiled = []

  def fake_plan(config, mesh, remat, compile_=True):
    data, fsdp, tensor = mesh
    peak = (48 / (fsdp * tensor) + remat_factor[remat] * 4 / tensor) * plan.GB
    if compile_:
      compiled.append((mesh, remat))
    return plan.Plan(mesh=mesh, remat=remat, params=0, opt_state=0, batch=0,
                     compiled_peak=peak, analytic={'peak': peak / 2, 'params': 0,
                                                   'opt_state': 0, 'gradients': 0,
                                                   'activations': 0})

  best = plan.recommend(config, cfg, 30 * plan.GB, devices=8, plan_fn=fake_plan)
  # none needs 6 + 32 at fsdp 8 (no); dots_saveable 6 + 24 = 30 at fsdp 8 fits, and so does
  # no smaller fsdp (48/4 + 24 = 36).
  assert (best.mesh, best.remat) == ((1, 8, 1), 'dots_saveable')
  assert compiled == [((1, 8, 1), 'none'), ((1, 8, 1), 'dots_saveable'),
                      ((8, 1, 1), 'dots_saveable'), ((4, 2, 1), 'dots_saveable'),
                      ((2, 4, 1), 'dots_saveable')]
  assert 'recommended: --config.mesh.data=1 --config.mesh.fsdp=8' in capsys.readouterr().out
  compiled.clear()
  best = plan.recommend(config, cfg, 10 * plan.GB, devices=8, plan_fn=fake_plan)
  # Nothing fits without tensor parallelism (6 + 8 at best); with tensor 2, full remat at
  # fsdp 4 does (6 + 4), fsdp 1 and 2 do not. Points whose estimate is over 1.5 x the
  # budget were never compiled.
  assert (best.mesh, best.remat) == ((1, 4, 2), 'full')
  assert ((1, 8, 1), 'none') not in compiled
