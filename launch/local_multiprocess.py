"""A multi-process (multi-host) run on one machine: N local processes joined by jax.distributed.

  python -m launch.local_multiprocess --processes=2 [--devices_per_process=2] -- \
      python -m research.main --config=configs/gpt.py:variant=tiny --workdir=/tmp/gpt_mp

Each process runs the command with `--coordinator_address=127.0.0.1:PORT --num_processes=N
--process_id=i` appended (research/main.py joins them with `jax.distributed.initialize`;
on CPU the processes exchange data through gloo), so the code path is the one a multi-host
accelerator run takes: one global mesh over every process's devices, each process loading its
own share of every batch, Orbax writing one checkpoint from all of them. On a CPU-only host,
`--devices_per_process` simulates that many devices per process
(XLA_FLAGS=--xla_force_host_platform_device_count).

Output lines are forwarded with a `[pI]` prefix. When one process fails, the others are
stopped (SIGTERM, then SIGKILL after --grace seconds) and the launcher exits with the failed
process's status; SIGTERM / SIGINT sent to the launcher are passed on to every process.
Re-running the same command resumes from the workdir's newest checkpoint like any run.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from launch import stop_signals


def free_port() -> int:
  """A TCP port nothing listens on now (the coordinator binds it moments later)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_command(command: Sequence[str], index: int, count: int, port: int) -> list[str]:
  return [*command, f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={count}',
          f'--process_id={index}']


def process_env(devices: int) -> dict[str, str]:
  env = dict(os.environ)
  if devices:
    flags = env.get('XLA_FLAGS', '').split()
    flags = [f for f in flags if not f.startswith('--xla_force_host_platform_device_count')]
    env['XLA_FLAGS'] = ' '.join([*flags, f'--xla_force_host_platform_device_count={devices}'])
  return env


def _forward(stream, prefix: str, out):
  for line in iter(stream.readline, ''):
    out.write(f'{prefix}{line}')
    out.flush()
  stream.close()


def run(command: Sequence[str], processes: int, devices_per_process: int = 0,
        port: int = 0, grace: float = 30.0) -> int:
  """Starts the processes, forwards their output, returns the run's exit status: 0 when all
  succeed, else the first failure's (a process killed by signal S counts as 128 + S)."""
  port = port or free_port()
  env = process_env(devices_per_process)
  procs, threads = [], []
  for i in range(processes):
    proc = subprocess.Popen(process_command(command, i, processes, port), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    thread = threading.Thread(target=_forward, args=(proc.stdout, f'[p{i}] ', sys.stdout),
                              daemon=True)
    thread.start()
    procs.append(proc)
    threads.append(thread)

  try:
    with stop_signals.passed_on(lambda: procs):
      status = _wait(procs, grace)
  finally:
    for thread in threads:
      thread.join(timeout=5)
  return status


def _exit_status(code: int) -> int:
  return 128 - code if code < 0 else code  # Popen reports death by signal S as -S


def _wait(procs: list[subprocess.Popen], grace: float) -> int:
  """Waits for every process; on the first failure stops the rest."""
  failed = None
  while any(p.poll() is None for p in procs):
    for i, proc in enumerate(procs):
      code = proc.poll()
      if code and failed is None:
        failed = (i, code)
        print(f'[launch] process {i} exited with status {_exit_status(code)}; stopping the '
              'others', file=sys.stderr, flush=True)
        _stop([p for p in procs if p.poll() is None], grace)
    time.sleep(0.1)
  if failed is None:
    failed = next(((i, p.returncode) for i, p in enumerate(procs) if p.returncode), None)
  return 0 if failed is None else _exit_status(failed[1])


def _stop(procs: list[subprocess.Popen], grace: float):
  for proc in procs:
    proc.terminate()
  deadline = time.time() + grace
  for proc in procs:
    try:
      proc.wait(timeout=max(deadline - time.time(), 0))
    except subprocess.TimeoutExpired:
      proc.kill()


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='python -m launch.local_multiprocess',
                              description=__doc__.split('\n')[0],
                              usage='%(prog)s --processes=N [options] -- COMMAND ...')
  p.add_argument('--processes', type=int, required=True, help='processes to start')
  p.add_argument('--devices_per_process', type=int, default=0,
                 help='simulated CPU devices per process (0: leave XLA_FLAGS alone)')
  p.add_argument('--port', type=int, default=0, help='coordinator port (0: a free one)')
  p.add_argument('--grace', type=float, default=30.0,
                 help='seconds the others get to exit after one fails, before SIGKILL')
  p.add_argument('command', nargs=argparse.REMAINDER, help='the command after --')
  args = p.parse_args(argv)
  if args.command and args.command[0] == '--':
    args.command = args.command[1:]
  if not args.command:
    p.error('give the command to run after --, e.g. -- python -m research.main ...')
  if args.processes < 1:
    p.error(f'--processes={args.processes}: need at least 1')
  return args


def main(argv=None):
  args = parse_args(argv)
  sys.exit(run(args.command, args.processes, args.devices_per_process, args.port, args.grace))


if __name__ == '__main__':
  main()
