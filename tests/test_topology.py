"""A run requeued on another topology: a checkpoint written on 8 devices (data 4 x fsdp 2)
resumes on 1 device and on data 2 x fsdp 4, and training continues with the losses of the
uninterrupted 8-device run.

Only the order of floating-point reductions differs between the layouts (how a sum over
the batch or a contraction over a sharded dimension is split across devices), so the
losses agree to float32 rounding, not bit for bit: within RTOL relative (measured: ~1e-7
after 3 Adam steps of the tiny GPT; dropout masks do not depend on the layout).
"""
import json
import os
import subprocess
import sys

import pytest

from configs import gpt as gpt_config
from research import train
from tests.conftest import REPO
from tests.test_train import configure, read_metrics

RTOL = 1e-5

EIGHT_DEVICES = r'''
import json, shutil, sys
import jax
from configs import gpt as gpt_config
from research import train
from tests.test_train import configure
assert jax.device_count() == 8
corpus, root = sys.argv[1:]

def run(workdir, data, fsdp):
  config = configure(gpt_config.get_config('variant=tiny'), corpus, 6)
  with config.unlocked():
    config.checkpoint.every = 3
    config.mesh.data, config.mesh.fsdp = data, fsdp
  return train.train_and_evaluate(config, f'{root}/{workdir}')

full = run('full', 4, 2)  # checkpoints 3 and 6
for name in ('resume_dp2_fsdp4', 'resume_1_device'):  # the run as if stopped after step 3
  shutil.copytree(f'{root}/full', f'{root}/{name}')
  shutil.rmtree(f'{root}/{name}/checkpoints/6')
print(json.dumps({'full': full, 'dp2_fsdp4': run('resume_dp2_fsdp4', 2, 4)}))
'''


def _losses_after_resume(workdir) -> dict[int, float]:
  records = read_metrics(workdir)
  resumed = max(i for i, r in enumerate(records) if r.get('event') == 'resumed')
  return {r['step']: r['train/loss'] for r in records[resumed:] if 'train/loss' in r}


@pytest.mark.slow  # ~40 s: four short runs, two of them on 8 simulated devices
def test_checkpoint_of_8_devices_resumes_on_1_device_and_on_another_mesh(small_corpus, tmp_path):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'PYTHONPATH': str(REPO)}
  result = subprocess.run([sys.executable, '-c', EIGHT_DEVICES, small_corpus, str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  finals = json.loads(result.stdout.strip().splitlines()[-1])

  # This process has one CPU device: the 8-device checkpoint is gathered onto it.
  config = configure(gpt_config.get_config('variant=tiny'), small_corpus, 6)
  with config.unlocked():
    config.checkpoint.every = 3
  finals['1_device'] = train.train_and_evaluate(config, str(tmp_path / 'resume_1_device'))

  full = {r['step']: r['train/loss'] for r in read_metrics(tmp_path / 'full')
          if 'train/loss' in r}
  for name in ('dp2_fsdp4', '1_device'):
    resumed = _losses_after_resume(tmp_path / f'resume_{name}')
    assert sorted(resumed) == [4, 5, 6], name
    for step, loss in resumed.items():
      assert loss == pytest.approx(full[step], rel=RTOL), (name, step)
    assert finals[name].keys() == finals['full'].keys()
    for key, value in finals[name].items():
      assert value == pytest.approx(finals['full'][key], rel=RTOL), (name, key)
  print({name: finals[name]['loss'] for name in finals})
