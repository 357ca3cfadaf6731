"""Multi-process runs from the command line: launch.local_multiprocess (train, kill, resume ==
one process on as many devices), hosts started independently with one of them killed, and the
SLURM script's multi-node path under a fake `srun`."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from launch import local_multiprocess, outcome, sweep
from research import multihost
from tests.conftest import REPO, run_main, tiny_overrides

LAUNCH = [sys.executable, '-m', 'launch.local_multiprocess']


def test_launcher_prefixes_output_and_stops_all_on_a_failure():
  """Process 1 fails: the launcher stops process 0 (which would sleep a minute) and exits
  with process 1's status; every line carries its process's prefix."""
  script = textwrap.dedent('''
      import sys, time
      index = int([a for a in sys.argv if a.startswith('--process_id=')][0].split('=')[1])
      assert '--num_processes=2' in sys.argv and any(
          a.startswith('--coordinator_address=127.0.0.1:') for a in sys.argv)
      print(f'hello from {index}', flush=True)
      if index == 1:
        sys.exit(3)
      time.sleep(60)
      ''')
  start = time.time()
  result = subprocess.run([*LAUNCH, '--processes=2', '--grace=5', '--', sys.executable, '-c',
                           script], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert result.returncode == 3, result.stderr
  assert time.time() - start < 30
  assert '[p0] hello from 0' in result.stdout and '[p1] hello from 1' in result.stdout
  assert 'process 1 exited with status 3' in result.stderr


def test_launcher_command_and_environment():
  assert local_multiprocess.process_command(['python', '-m', 'x'], 1, 4, 1234) == [
      'python', '-m', 'x', '--coordinator_address=127.0.0.1:1234', '--num_processes=4',
      '--process_id=1']
  env = local_multiprocess.process_env(2)
  assert env['XLA_FLAGS'].split().count('--xla_force_host_platform_device_count=2') == 1
  with pytest.raises(SystemExit):
    local_multiprocess.parse_args(['--processes=2'])  # no command


def losses(workdir) -> dict[int, float]:
  """train/loss by step; a step logged twice (before a kill and after the resume) keeps the
  last value."""
  out = {}
  for line in pathlib.Path(workdir, 'metrics.jsonl').read_text().splitlines():
    record = json.loads(line)
    if 'train/loss' in record:
      out[record['step']] = record['train/loss']
  return out


STEPS = 16
# fsdp=2 over 2 processes x 2 devices: each process holds rows of the batch that are not
# contiguous in the global batch (sharding.BATCH_AXES is fsdp-major).
RUN_ARGS = ['--config=configs/gpt.py:variant=tiny', '--config.model.dropout=0',
            '--config.model.attention_dropout=0', '--config.mesh.fsdp=2']


def overrides(corpus):
  return [*tiny_overrides(corpus, steps=STEPS), '--config.checkpoint.every=4']


@pytest.mark.slow
def test_two_processes_killed_and_resumed_match_one_process(small_corpus, tmp_path):
  """2 processes x 2 devices (gloo), SIGKILLed once the first checkpoint is written, then
  started again with the same command: every step's loss equals a one-process run on 4
  devices."""
  workdir = tmp_path / 'multi'
  command = [*LAUNCH, '--processes=2', '--devices_per_process=2', '--', sys.executable, '-m',
             'research.main', *RUN_ARGS, *overrides(small_corpus), f'--workdir={workdir}']
  first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)
  deadline = time.time() + 300
  while not (workdir / 'checkpoints' / '4').is_dir():
    assert first.poll() is None, first.stdout.read()[-3000:]
    assert time.time() < deadline, 'no checkpoint after 300 s'
    time.sleep(0.05)
  os.killpg(first.pid, signal.SIGKILL)  # the launcher and both processes, mid-run
  first.wait()
  killed_at = max(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert killed_at < STEPS, 'the run finished before it was killed'

  resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stdout[-3000:]
  assert '[p0] ' in resumed.stdout and '[p1] ' in resumed.stdout

  single = run_main(*RUN_ARGS, *overrides(small_corpus), f'--workdir={tmp_path}/single',
                    env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert single.returncode == 0, single.stderr[-3000:]
  multi, one = losses(workdir), losses(tmp_path / 'single')
  assert sorted(multi) == sorted(one) == list(range(1, STEPS + 1))
  diffs = {step: abs(multi[step] - one[step]) / one[step] for step in one}
  print(f'killed after checkpoint {killed_at}; losses (2 processes, resumed | 1 process):')
  for step in one:
    print(f'  step {step:2d}: {multi[step]:.6f} | {one[step]:.6f}')
  print(f'max relative difference {max(diffs.values()):.2e}')
  assert max(diffs.values()) < 1e-5, diffs
  events = [json.loads(l).get('event') for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert 'resumed' in events


def start_host(index: int, port: int, workdir, corpus, log) -> subprocess.Popen:
  """One host's command, started on its own as on a TPU VM pod or under a plain srun: no
  launcher stops the others when one dies."""
  return subprocess.Popen(
      [sys.executable, '-m', 'research.main', *RUN_ARGS, *overrides(corpus),
       f'--workdir={workdir}', f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
       f'--process_id={index}'],
      cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True,
      env={**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'})


@pytest.mark.slow
def test_a_host_killed_without_a_launcher_ends_the_other_and_the_rerun_resumes(small_corpus,
                                                                               tmp_path):
  """2 processes x 2 devices started independently; process 1 SIGKILLed mid-run. Process 0
  exits within the bound (research/multihost.py) with one line naming process 1 and status 75
  (the SLURM script requeues it); the same two commands again resume from the newest complete
  checkpoint, and every step's loss equals a one-process run on 4 devices."""
  workdir, port = tmp_path / 'multi', local_multiprocess.free_port()
  logs = [open(tmp_path / f'host{i}.log', 'w') for i in range(2)]
  hosts = [start_host(i, port, workdir, small_corpus, logs[i]) for i in range(2)]
  deadline = time.time() + 300
  while not (workdir / 'checkpoints' / '4').is_dir():
    assert all(h.poll() is None for h in hosts), (tmp_path / 'host0.log').read_text()[-3000:]
    assert time.time() < deadline, 'no checkpoint after 300 s'
    time.sleep(0.05)
  hosts[1].kill()
  killed = time.time()
  status = hosts[0].wait(timeout=300)
  time_to_exit = time.time() - killed
  log = (tmp_path / 'host0.log').read_text()
  steps = [int(line.split()[1].split('/')[0]) for line in log.splitlines()
           if line.startswith('step ') and '/' in line.split()[1]]
  exit_line = next(line for line in log.splitlines() if line.startswith('error: '))
  print(f'process 1 SIGKILLed after step {max(steps)} of process 0; process 0 exited with '
        f'status {status} after {time_to_exit:.1f} s: {exit_line}')
  assert status == multihost.EXIT_LOST_PEER, log[-3000:]
  assert exit_line.startswith('error: lost process 1 of 2 (process 0: ')
  assert time_to_exit < 120
  assert 'Fatal Python error' not in log and 'Traceback' not in log
  killed_at = max(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert killed_at < STEPS, 'the run finished before it was killed'

  hosts = [start_host(i, port, workdir, small_corpus, logs[i]) for i in range(2)]
  assert [h.wait(timeout=600) for h in hosts] == [0, 0], (
      (tmp_path / 'host0.log').read_text()[-3000:])
  single = run_main(*RUN_ARGS, *overrides(small_corpus), f'--workdir={tmp_path}/single',
                    env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert single.returncode == 0, single.stderr[-3000:]
  multi, one = losses(workdir), losses(tmp_path / 'single')
  assert sorted(multi) == sorted(one) == list(range(1, STEPS + 1))
  resumed = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  resumed_at = next(r['step'] for r in resumed if r.get('event') == 'resumed')
  print(f'resumed from step {resumed_at}; losses (2 processes, killed and resumed | 1 process):')
  for step in one:
    print(f'  step {step:2d}: {multi[step]:.6f} | {one[step]:.6f}')
  diffs = {step: abs(multi[step] - one[step]) / one[step] for step in one}
  print(f'max relative difference {max(diffs.values()):.2e}')
  assert max(diffs.values()) < 1e-5, diffs


FAKE_SRUN = '''#!/bin/bash
# A stand-in for srun inside an allocation: starts $SLURM_NTASKS copies of the command on this
# machine, each with the variables srun gives a task, and fails if any task fails.
n=${SLURM_NTASKS:-1}
pids=()
for ((i = 0; i < n; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=0 SLURM_NODEID=$i SLURM_STEP_NODELIST=localhost \\
    SLURM_STEP_NUM_NODES=$n "$@" > "$FAKE_SRUN_LOGS/task$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
'''


def slurm_coordinator_job_id() -> int:
  """A SLURM_JOB_ID whose coordinator port (jax: 61440 + id % 4096) is free now."""
  for job_id in range(os.getpid() % 4096, os.getpid() % 4096 + 4096):
    port = 61440 + job_id % 4096
    with socket.socket() as s:
      try:
        s.bind(('127.0.0.1', port))
        return job_id
      except OSError:
        continue
  raise RuntimeError('no free port in 61440-65535')


@pytest.mark.slow
def test_slurm_script_runs_two_nodes_under_fake_srun(small_corpus, tmp_path):
  """The array script launch/sweep.py writes for --slurm_nodes=2, run by bash as sbatch would
  run it, its `srun` a fake that starts two local tasks with SLURM_* set: research.main finds
  the coordinator from SLURM_STEP_NODELIST / SLURM_JOB_ID (jax.distributed's SLURM detection)
  and both tasks train as one 2-process mesh to the end."""
  spec = sweep.RunSpec('run', str(tmp_path / 'run'), 'configs/gpt.py:variant=tiny',
                       tuple(a[len('--config.'):].split('=', 1) for a in
                             tiny_overrides(small_corpus, steps=2)))
  script = tmp_path / 'sweep.sbatch'
  script.write_text(sweep.slurm_script([spec], str(tmp_path), nodes=2))
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'srun').write_text(FAKE_SRUN)
  (bin_dir / 'srun').chmod(0o755)
  logs = tmp_path / 'logs'
  logs.mkdir()
  env = {**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}', 'SLURM_ARRAY_TASK_ID': '0',
         'SLURM_JOB_ID': str(slurm_coordinator_job_id()), 'SLURM_NTASKS': '2',
         'SLURM_NNODES': '2', 'FAKE_SRUN_LOGS': str(logs),
         'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
  result = subprocess.run(['bash', str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
  task_logs = [(logs / f'task{i}.log').read_text() for i in range(2)]
  assert result.returncode == 0, (result.stderr[-2000:], [log[-2000:] for log in task_logs])
  for i, log in enumerate(task_logs):
    assert f'(process {i} of 2)' in log, log[-2000:]
  assert (tmp_path / 'run' / 'checkpoints' / '2').is_dir()
  assert outcome.is_finished(str(tmp_path / 'run'))
