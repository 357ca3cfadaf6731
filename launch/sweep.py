"""Expands a config file's `get_sweep()` into runs and launches them (this module only builds
commands: every run is a plain `python -m research.main ...`).

  python -m launch.sweep --config=configs/repro/bert_table5.py:variant=tiny,stage=pretrain \
      [--root=runs/NAME] [--local [--parallel=2] | --slurm=sweep.sbatch] [--dry_run]

Each run gets a readable workdir `<root>/<key=value,...>` named after the overrides that
vary across the sweep (e.g. `task=sentiment,setting=mlm,seed=1`). A run is finished when its
final checkpoint exists (`checkpoints/<train.steps>` of its resolved config.json, written last
by research/train.py and research/finetune.py); re-running the sweep skips finished runs and
starts the others (failed or unfinished), which resume from their latest checkpoint by
themselves. A local run that fails (bad hyperparameter, loss not finite, killed) does not stop
the others: each run's exit is recorded in its workdir (launch/outcome.py), the sweep lists the
failed runs with their last error line at the end and exits with status 1, and
launch/collect.py lists them under the table.

--slurm writes an array job, one array task per unfinished run: `srun python -m research.main`
with the run's arguments, so a run may span several nodes (--slurm_nodes): srun starts one
process per node and research.main joins them with `jax.distributed.initialize()`, which
reads the SLURM environment. Preemption and time limits requeue the task instead of losing
it: `--signal=B:TERM@<--slurm_signal_seconds>` has SLURM send the script SIGTERM that long
before the time limit; the script passes it to the run, which finishes its step, saves it and
exits with 143 (research/main.py); on 143 the script requeues its array task, which resumes
from that checkpoint (`--requeue` also lets SLURM requeue a preempted task by itself).
A multi-node run that loses a node ends on the survivors with exit status 75
(research/multihost.py), or 134 when JAX's coordination service aborts them (process 0 lost,
or a node silent for its heartbeat timeout), or 137 (a task SIGKILLed): the script requeues
those too while the task has been restarted fewer than --slurm_failure_restarts times
(SLURM_RESTART_COUNT), so a lost node costs a restart from the newest checkpoint, and a run
that keeps crashing still stops.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from launch import outcome, stop_signals


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

@dataclasses.dataclass(frozen=True)
class RunSpec:
  name: str
  workdir: str
  config_arg: str  # 'file.py:arg' for --config
  overrides: tuple[tuple[str, Any], ...]  # ('train.seed', 1), ... for --config.<key>=value

  def command(self, python: str = sys.executable) -> list[str]:
    return [python, '-m', 'research.main', f'--config={self.config_arg}',
            f'--workdir={self.workdir}',
            *(f'--config.{k}={_flag_value(v)}' for k, v in self.overrides)]


def _flag_value(value: Any) -> str:
  return str(value).lower() if isinstance(value, bool) else str(value)


def split_config(config: str) -> tuple[str, str]:
  path, _, arg = config.partition(':')
  return path, arg


def load_sweep(config: str) -> list[dict[str, Any]]:
  """Calls `get_sweep(arg)` of the config file (imported by path, as config_flags does)."""
  path, arg = split_config(config)
  if not os.path.exists(path):
    raise FileNotFoundError(f'config file {path} does not exist')
  spec = importlib.util.spec_from_file_location('sweep_config', path)
  module = importlib.util.module_from_spec(spec)
  if REPO not in sys.path:  # config files import `configs.base`
    sys.path.insert(0, REPO)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'{path} defines no get_sweep(arg); nothing to sweep')
  return module.get_sweep(arg)


def _format_value(value: Any) -> str:
  if isinstance(value, float):
    value = f'{value:.3g}'
  value = str(value).rstrip('/')
  if '/' in value:  # a path: its last component is what tells runs apart
    value = os.path.basename(value)
  return re.sub(r'[^A-Za-z0-9._+-]', '_', value)


def run_names(runs: Sequence[dict[str, Any]]) -> list[str]:
  """`key=value,...` over the keys whose value differs between runs (first-seen order);
  a key is shown by its last dotted component(s), as many as tell it apart."""
  keys = list(dict.fromkeys(k for run in runs for k in run))
  varying = [k for k in keys if len({repr(run.get(k)) for run in runs}) > 1]

  def suffix(key: str, depth: int) -> str:
    return '.'.join(key.split('.')[-depth:])

  short = {}
  for k in varying:  # the shortest dotted suffix no other varying key shares
    depth = 1
    while any(suffix(o, depth) == suffix(k, depth) for o in varying if o != k) and \
        depth < k.count('.') + 1:
      depth += 1
    short[k] = suffix(k, depth)
  names = [','.join(f'{short[k]}={_format_value(run.get(k))}' for k in varying) or 'run'
           for run in runs]
  duplicates = {n for n in names if names.count(n) > 1}
  if duplicates:
    raise ValueError(f'runs {sorted(duplicates)} occur more than once in the sweep')
  return names


def merge_arg(arg: str, updates: dict[str, Any]) -> str:
  items = dict(item.split('=', 1) for item in filter(None, arg.split(',')))
  items.update({k: _flag_value(v) for k, v in updates.items()})
  return ','.join(f'{k}={v}' for k, v in items.items())


def expand(config: str, root: str, runs: Sequence[dict[str, Any]]) -> list[RunSpec]:
  path, arg = split_config(config)
  specs = []
  for name, run in zip(run_names(runs), runs):
    run = {k: v.replace('{root}', root) if isinstance(v, str) else v for k, v in run.items()}
    bad = [k for k in run if not k.startswith(('config.', 'arg.'))]
    if bad:
      raise ValueError(f'sweep keys {bad} must start with "config." or "arg."')
    arg_updates = {k[len('arg.'):]: v for k, v in run.items() if k.startswith('arg.')}
    merged = merge_arg(arg, arg_updates)
    overrides = tuple((k[len('config.'):], v) for k, v in run.items() if k.startswith('config.'))
    specs.append(RunSpec(name, os.path.join(root, name),
                         f'{path}:{merged}' if merged else path, overrides))
  return specs


def default_root(config: str) -> str:
  path, arg = split_config(config)
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join('runs', name + (f'-{_format_value(arg)}' if arg else ''))


def compilation_cache_env(specs: Sequence[RunSpec]) -> dict[str, str]:
  """The environment of a local sweep's runs: JAX's persistent compilation cache in
  `<root>/.jax_cache`, shared by the runs (unless JAX_COMPILATION_CACHE_DIR is set). Seeds of
  one setting compile the same programs; reading them back saves ~8 s of a tiny fine-tuning
  run's ~20 s of start-up (measured on 2 CPU cores). JAX locks the cache across processes."""
  env = dict(os.environ)
  if specs and 'JAX_COMPILATION_CACHE_DIR' not in env:
    root = os.path.dirname(os.path.normpath(specs[0].workdir))
    env['JAX_COMPILATION_CACHE_DIR'] = os.path.join(root, '.jax_cache')
    env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  return env


class Stopped(Exception):
  """A stop signal (SIGTERM, or SIGINT: Ctrl-C) ended a local sweep; its running runs were
  passed the signal, saved a checkpoint and exited, and the same command resumes them."""

  def __init__(self, signum: int):
    self.signum = signum
    super().__init__(f'stopped by {signal.Signals(signum).name}; the same command resumes')


def run_local(specs: Sequence[RunSpec], parallel: int = 1) -> dict[str, int]:
  """Runs each spec as a subprocess (at most `parallel` at once, sharing a compilation
  cache), output appended to `<workdir>/log.txt`; returns the exit status of each run by name
  (Popen's: -S for a run killed by signal S) and records it in the workdir (launch/outcome.py).

  SIGTERM (`kill`, a scheduler) or SIGINT (Ctrl-C) starts no further run, passes the signal
  to the running ones (research/loop.py: each finishes its step, saves a checkpoint and
  exits), waits for them, then raises `Stopped`."""
  pending, running, status = list(specs), {}, {}
  env = compilation_cache_env(specs)
  with stop_signals.passed_on(lambda: (r[0] for r in running.values())) as stops:
    while (pending and not stops) or running:
      while pending and not stops and len(running) < parallel:
        spec = pending.pop(0)
        os.makedirs(spec.workdir, exist_ok=True)
        log = open(os.path.join(spec.workdir, 'log.txt'), 'a')
        print(f'[sweep] start {spec.name}', flush=True)
        running[spec.name] = (subprocess.Popen(spec.command(), cwd=REPO, stdout=log, env=env,
                                               stderr=subprocess.STDOUT), log, time.time(),
                              spec.workdir, log.tell())
      for name, (process, log, start, workdir, offset) in list(running.items()):
        if process.poll() is None:
          continue
        log.close()
        status[name] = code = process.returncode
        with open(log.name, errors='replace') as f:  # this attempt's output only
          f.seek(offset)
          printed = f.read()
        outcome.record(workdir, code, printed)
        result = ('done' if code == 0 else 'stopped' if stops
                  else f'FAILED ({outcome.describe_exit(code, printed)})')
        print(f'[sweep] {result} {name} in {time.time() - start:.0f}s', flush=True)
        del running[name]
      time.sleep(0.2)
  if stops:
    raise Stopped(stops[0])
  return status


def slurm_script(specs: Sequence[RunSpec], root: str, *, nodes: int = 1, gpus_per_node: int = 0,
                 cpus_per_task: int = 8, time_limit: str = '24:00:00', partition: str = '',
                 max_parallel: int = 0, signal_seconds: int = 300, failure_restarts: int = 3,
                 python: str = sys.executable) -> str:
  """A SLURM array job: array task i runs specs[i] with srun on `nodes` nodes (with this
  Python by default: clusters share the file system the sweep was generated on). SIGTERM
  `signal_seconds` before the time limit (or on preemption) stops the run at a checkpoint
  and requeues the task; so does a lost process, up to `failure_restarts` restarts (module
  docstring)."""
  throttle = f'%{max_parallel}' if max_parallel else ''
  header = [
      '#!/bin/bash',
      f'#SBATCH --job-name={os.path.basename(os.path.normpath(root))}',
      f'#SBATCH --array=0-{len(specs) - 1}{throttle}',
      f'#SBATCH --nodes={nodes}',
      '#SBATCH --ntasks-per-node=1',  # one JAX process per node, driving all its devices
      f'#SBATCH --cpus-per-task={cpus_per_task}',
      f'#SBATCH --time={time_limit}',
      f'#SBATCH --output={os.path.join(root, "slurm-%A_%a.out")}',
      '#SBATCH --requeue',  # a preempted run restarts and resumes from its checkpoint
      # SIGTERM to this script (B:) before the time limit: time to finish a step and save.
      f'#SBATCH --signal=B:TERM@{signal_seconds}',
  ]
  if gpus_per_node:
    header.append(f'#SBATCH --gpus-per-node={gpus_per_node}')
  if partition:
    header.append(f'#SBATCH --partition={partition}')
  cases = []
  for i, spec in enumerate(specs):
    args = ' '.join(shlex.quote(a) for a in spec.command(python)[1:])
    cases.append(f'  {i}) ARGS=({args}) ;;  # {spec.name}')
  body = [
      '# Generated by launch/sweep.py; re-generate to drop runs that have finished.',
      'set -euo pipefail',
      f'cd {shlex.quote(REPO)}',
      'case "$SLURM_ARRAY_TASK_ID" in',
      *cases,
      'esac',
      '# SIGTERM: the run saves its step and exits with 143; then this task is requeued.',
      '# A signal that comes before the run has a PID is passed on as soon as it has one.',
      'RUN=',
      'STOP=0',
      'trap \'echo "[sweep] SIGTERM: stopping the run at a checkpoint"; STOP=1; '
      'if [ -n "$RUN" ]; then kill -TERM "$RUN" 2>/dev/null || true; fi\' TERM',
      f'srun {python} "${{ARGS[@]}}" &',
      'RUN=$!',
      'if [ "$STOP" = 1 ]; then kill -TERM "$RUN" 2>/dev/null || true; fi',
      '# A trapped signal interrupts `wait`: wait again until the run has really exited.',
      'while true; do',
      '  status=0',
      '  wait "$RUN" || status=$?',
      '  kill -0 "$RUN" 2>/dev/null || break',
      'done',
      'if [ "$status" -eq 143 ]; then',
      '  echo "[sweep] the run stopped at a checkpoint; requeueing it"',
      '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" && exit 0',
      'fi',
      '# A lost process (75), JAX\'s abort on a lost peer (134), a SIGKILLed task (137): the',
      '# run resumes from its newest checkpoint; a few times, so a run that keeps crashing stops.',
      'restarts=${SLURM_RESTART_COUNT:-0}',
      'case "$status" in 75|134|137)',
      f'  if [ "$restarts" -lt {failure_restarts} ]; then',
      f'    echo "[sweep] the run lost a process (exit status $status); requeueing it (restart '
      f'$((restarts + 1)) of {failure_restarts})"',
      '    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" && exit 0',
      '  fi ;;',
      'esac',
      'exit "$status"',
  ]
  return '\n'.join(header + [''] + body) + '\n'


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='python -m launch.sweep', description=__doc__.split('\n')[0])
  p.add_argument('--config', required=True, help='config file[:arg] defining get_sweep(arg)')
  p.add_argument('--root', help='parent of the run workdirs (default: runs/<config>[-<arg>])')
  p.add_argument('--local', action='store_true', help='run the unfinished runs here')
  p.add_argument('--parallel', type=int, default=1, help='with --local: runs at a time')
  p.add_argument('--slurm', metavar='PATH', help='write a SLURM array script to PATH')
  p.add_argument('--slurm_nodes', type=int, default=1, help='nodes per run (multi-host)')
  p.add_argument('--slurm_gpus_per_node', type=int, default=0)
  p.add_argument('--slurm_cpus_per_task', type=int, default=8)
  p.add_argument('--slurm_time', default='24:00:00', help='wall-time limit per run')
  p.add_argument('--slurm_partition', default='')
  p.add_argument('--slurm_max_parallel', type=int, default=0,
                 help='array tasks running at once (0: no limit)')
  p.add_argument('--slurm_signal_seconds', type=int, default=300,
                 help='SIGTERM this long before the time limit: the run saves and is requeued')
  p.add_argument('--slurm_failure_restarts', type=int, default=3,
                 help='requeues of a run that lost a process (exit status 75, 134 or 137)')
  p.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  root = os.path.abspath(args.root or default_root(args.config))
  specs = expand(args.config, root, load_sweep(args.config))
  outcomes = {s.name: outcome.read(s.workdir) for s in specs}
  todo = [s for s in specs if outcomes[s.name].state != outcome.FINISHED]
  failed_before = sum(outcomes[s.name].state == outcome.FAILED for s in todo)
  print(f'[sweep] {len(specs)} runs in {root}: {len(specs) - len(todo)} finished, '
        f'{len(todo)} to run ({failed_before} failed before, {len(todo) - failed_before} '
        'unfinished)', flush=True)
  if args.dry_run or not (args.local or args.slurm):
    for spec in todo:
      print(shlex.join(spec.command()))
    return
  if args.slurm:
    if todo:
      with open(args.slurm, 'w') as f:
        f.write(slurm_script(todo, root, nodes=args.slurm_nodes,
                             gpus_per_node=args.slurm_gpus_per_node,
                             cpus_per_task=args.slurm_cpus_per_task, time_limit=args.slurm_time,
                             partition=args.slurm_partition,
                             max_parallel=args.slurm_max_parallel,
                             signal_seconds=args.slurm_signal_seconds,
                             failure_restarts=args.slurm_failure_restarts))
      print(f'[sweep] wrote {args.slurm}: sbatch {args.slurm}')
    return
  try:
    run_local(todo, args.parallel)  # each run's outcome is read back from its workdir
  except Stopped as stopped:
    sys.exit(f'[sweep] {stopped}')
  ended = {s.name: outcome.read(s.workdir) for s in todo}
  failed = sum(o.state == outcome.FAILED for o in ended.values())
  unfinished = sum(o.state == outcome.UNFINISHED for o in ended.values())
  if failed or unfinished:
    print(f'[sweep] {failed} of {len(specs)} runs failed, {unfinished} unfinished (more in '
          f'{root}/<run>/log.txt; the same command retries these only):')
    print(outcome.table(ended), end='')
    sys.exit(1)


if __name__ == '__main__':
  try:
    main()
  except (ValueError, FileNotFoundError) as e:  # bad input: one line, not a traceback
    sys.exit(f'error: {e}')
