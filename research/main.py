"""Command-line entry point.

  python -m research.main --config=configs/bert.py:variant=tiny --workdir=/tmp/bert \
      [--config.train.steps=2000 ...] [--mode=train|eval|generate]
  python -m research.main --config=configs/finetune.py:task=sentiment,init_from=/tmp/bert \
      --workdir=/tmp/bert_sentiment
  python -m research.main --workdir=/tmp/gpt --mode=generate --prompt="It is a truth" \
      --max_new_tokens=40 --temperature=0.8 --top_p=0.9

Re-running the same command resumes from the newest checkpoint in --workdir. Problems with
the input (unknown config key, missing corpus, mismatched checkpoint, ...) end the run with a
one-line `error:` message and exit status 2; nothing already saved is touched.

Training and fine-tuning hold `<workdir>/writer.lock` (research/workdir_lock.py): a second run
on the same workdir stops with an `error:` line naming the holder. Exit status:
  0    finished;
  2    `error:` bad input, or a run that cannot go on by itself: workdir in use, checkpoint
       unwritable (disk full), loss not finite for train.max_skipped_steps steps in a row;
  75   a multi-host run lost one of its processes (research/multihost.py): one `error:` line
       naming it; run the same command again (on every host) to resume;
  143  SIGTERM, 130 SIGINT: the step in progress finished and its checkpoint was saved (one
       `preempted:` line); run the same command again to resume. launch/sweep.py's SLURM
       script requeues the job on 143.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys

import jax
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from research import (checkpointing, finetune, generate, incontext, loading, loop, models,
                      multihost, reporting, train, workdir_lock)
from research.data import corpus

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:arg].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and the tokenizer.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'eval', 'generate'],
    'train: pretrain, or fine-tune when the config has a `task` section (configs/finetune.py); '
    'eval: held-out metrics of the newest checkpoint (decoders add in-context evaluation); '
    'generate: continue --prompt / --prompts_file with a trained decoder, or write the target '
    'of each as a source with a trained encoder-decoder.')
_PROMPT = flags.DEFINE_multi_string('prompt', None, 'generate: a prompt (repeatable).')
_PROMPTS_FILE = flags.DEFINE_string('prompts_file', None, 'generate: a file of prompts, one a line.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 64, 'generate: tokens to add per prompt.')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.0, 'generate: 0 = greedy, >0 = sampling.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'generate: sample among the k most probable tokens.')
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'generate: nucleus sampling mass.')
_NUM_BEAMS = flags.DEFINE_integer('num_beams', 1, 'generate: beam width (>1 = beam search).')
_LENGTH_PENALTY = flags.DEFINE_float('length_penalty', 0.6, 'generate: GNMT beam length penalty.')
_SEED = flags.DEFINE_integer('seed', 0, 'generate: sampling seed.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'host:port of process 0 for a multi-process run (auto-detected under SLURM).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process\'s index in a multi-process run.')
flags.mark_flags_as_required(['workdir'])

# Errors that describe bad input rather than a bug: reported in one line, no traceback.
# OSError: the file system refused (permissions, no space left); the message names the path.
USER_ERRORS = (ValueError, OSError, corpus.CorpusError, checkpointing.CheckpointError,
               loop.Diverged, workdir_lock.WorkdirLocked)


def init_distributed():
  """Joins a multi-process (multi-host) run; every process then sees one global mesh."""
  if not _COORDINATOR.value and int(os.environ.get('SLURM_NTASKS', '1')) <= 1:
    return
  # CPU processes need a collectives backend of their own; accelerators ignore this.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  # research/loop.py handles SIGTERM itself and agrees on the step across processes; JAX's
  # preemption notifier would keep a SIGTERM that arrives before the loop starts to itself.
  jax.config.update('jax_enable_preemption_service', False)
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                             num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
                             **multihost.initialize_args())


def hold_workdir(stack: contextlib.ExitStack, workdir: str) -> None:
  """Takes the workdir's writer lock for the rest of `stack`. In a multi-process run process 0
  holds it and the others follow its verdict, so a refused run stops on every process."""
  refused = None
  if jax.process_index() == 0:
    try:
      stack.enter_context(workdir_lock.hold(workdir))
    except workdir_lock.WorkdirLocked as e:
      refused = e
  if jax.process_count() > 1:
    if not multihost_utils.broadcast_one_to_all(np.int32(refused is None)):
      raise refused or workdir_lock.WorkdirLocked(
          f'{workdir} is in use by another run (process 0 names it)')
  if refused:
    raise refused


def run(config, workdir: str, mode: str):
  if mode == 'generate':  # the workdir describes its model (loading.load_params)
    texts = generate.run_generate(
        workdir, _PROMPT.value, _PROMPTS_FILE.value, max_new_tokens=_MAX_NEW.value,
        temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
        num_beams=_NUM_BEAMS.value, length_penalty=_LENGTH_PENALTY.value, seed=_SEED.value)
    for text in texts:
      print(text)
    return None
  if config is None:
    raise ValueError(f'--mode={mode} needs --config (the experiment to train or evaluate)')
  is_finetune = 'task' in config
  if mode == 'train':
    return (finetune.run_finetune if is_finetune else train.train_and_evaluate)(config, workdir)
  if is_finetune:
    return finetune.evaluate_finetuned(config, workdir)
  metrics = train.evaluate_checkpoint(config, workdir)
  if models.reads_left_to_right(loading.read_model_config(workdir)):
    metrics.update(incontext.run_incontext_eval(config, workdir))
  return metrics


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, except that a bad flag or --config (unknown argument or key, a value
  of the wrong type) ends in one `error:` line and exit status 2, like any other bad input:
  absl would print the config file's traceback, or none of ml_collections' hint."""
  try:
    remaining = flags.FLAGS(argv)
    if _CONFIG.value is not None:
      _CONFIG.value.keys()  # a config file that failed to load raises on first use: here
    return remaining
  except (AttributeError, KeyError) as e:  # ml_collections: a mistyped --config.a.b key
    print(f'error: unknown config key {_last_message(e)}', file=sys.stderr)
  except OSError as e:  # the config file itself
    print(f'error: --config: {str(e).strip().splitlines()[-1].strip()}', file=sys.stderr)
  except (flags.Error, ValueError, TypeError) as e:
    print(f'error: {_last_message(e)}', file=sys.stderr)
  sys.exit(2)


def _last_message(error: Exception) -> str:
  """The message that names the problem: the innermost error of a traceback nested in the
  text (ml_collections reports config-file errors so), else the text on one line."""
  text = str(error)
  nested = re.findall(r'^\w+(?:Error|Exception): (.*)$', text, re.MULTILINE)
  if nested:
    return nested[-1]
  text = text.replace('\\n', ' ').replace("\\'", "'")  # a KeyError's repr inside
  if len(text) > 1 and text[0] == text[-1] and text[0] in '\'"':
    text = text[1:-1]
  return ' '.join(text.split())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  reporting.quiet_library_logs()
  init_distributed()
  logging.info('JAX devices: %s (process %d of %d)', jax.devices(), jax.process_index(),
               jax.process_count())
  try:
    with contextlib.ExitStack() as stack:
      stack.enter_context(multihost.exit_on_lost_peer())  # before any error becomes a line
      if _MODE.value == 'train':  # eval and generate only read
        hold_workdir(stack, _WORKDIR.value)
      metrics = run(_CONFIG.value, _WORKDIR.value, _MODE.value)
  except loop.Preempted as e:
    print(f'preempted: {e}', file=sys.stderr)
    sys.exit(e.exit_status)
  except USER_ERRORS as e:
    logging.debug('traceback of the error below', exc_info=True)  # shown with --verbosity=1
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if metrics:
    print(' '.join(f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'
                   for k, v in sorted(metrics.items())))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
