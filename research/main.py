"""Command-line entry point.

  python -m research.main --config=configs/bert.py:variant=tiny --workdir=/tmp/bert \
      [--config.train.steps=2000 ...] [--mode=train|eval]

Re-running the same command resumes from the newest checkpoint in --workdir. Problems with
the input (unknown config key, missing corpus, mismatched checkpoint, ...) end the run with a
one-line `error:` message and exit status 2; nothing already saved is touched.
"""
from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from research import checkpointing, reporting, train
from research.data import corpus

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:arg].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and the tokenizer.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'What to run.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'host:port of process 0 for a multi-process run (auto-detected under SLURM).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process\'s index in a multi-process run.')
flags.mark_flags_as_required(['config', 'workdir'])

# Errors that describe bad input rather than a bug: reported in one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, corpus.CorpusError, checkpointing.CheckpointError)


def init_distributed():
  """Joins a multi-process (multi-host) run; every process then sees one global mesh."""
  if not _COORDINATOR.value and int(os.environ.get('SLURM_NTASKS', '1')) <= 1:
    return
  # CPU processes need a collectives backend of their own; accelerators ignore this.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)


def run(config, workdir: str, mode: str) -> dict:
  if mode == 'train':
    return train.train_and_evaluate(config, workdir)
  return train.evaluate_checkpoint(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  reporting.quiet_library_logs()
  init_distributed()
  logging.info('JAX devices: %s (process %d of %d)', jax.devices(), jax.process_index(),
               jax.process_count())
  try:
    metrics = run(_CONFIG.value, _WORKDIR.value, _MODE.value)
  except USER_ERRORS as e:
    logging.debug('traceback of the error below', exc_info=True)  # shown with --verbosity=1
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if metrics:
    print(' '.join(f'{k}={v:.4f}' for k, v in sorted(metrics.items())))


if __name__ == '__main__':
  app.run(main)
