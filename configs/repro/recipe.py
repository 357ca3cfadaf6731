"""What every reproduction recipe (configs/repro/*.py) does alike: a two-stage config
(stage=pretrain | finetune, each run in its own workdir under one sweep root) with named
choices checked, pretraining arms on the vendored corpus with equal compute, fine-tuning runs
that read a task's train and dev files only (the tables report dev sets)."""
from __future__ import annotations

from typing import Callable, Iterable

import ml_collections

from configs import base, finetune
from launch import hyper


def choose(name: str, value: str, choices: Iterable[str]) -> str:
  """`value` if it is one of `choices`, else a one-line error naming them."""
  choices = list(choices)
  if value not in choices:
    raise ValueError(f'{name}={value!r}; use one of {", ".join(choices)}')
  return value


def staged(args: dict, variants: dict, pretrain: Callable, finetune: Callable):
  """get_config of a recipe: `pretrain(args, variant)` or `finetune(args, variant)`, locked
  (args['variant'] already checked with `choose`)."""
  variant = variants[args['variant']]
  build = pretrain if args['stage'] == 'pretrain' else finetune
  return build(args, variant).lock()


def pretraining(c: ml_collections.ConfigDict, args: dict, variant: dict, *, seq_len: int,
                evaluations: int, shared_tokenizer: bool = True) -> ml_collections.ConfigDict:
  """An arm's data and schedule: `variant`'s steps (or args' pretrain_steps), batch, lr and
  warmup over args' corpus; with `shared_tokenizer`, every arm reads the tokenizer the sweep
  root holds (trained once)."""
  c.data.corpus = args['corpus']
  if shared_tokenizer and args['pretrained']:
    c.data.tokenizer.path = f"{args['pretrained']}/tokenizer.model"
  steps = args['pretrain_steps'] or variant['pretrain_steps']
  base.pretraining_schedule(c, steps=steps, batch_size=variant['batch'],
                            learning_rate=variant['lr'], evaluations=evaluations,
                            warmup_steps=min(variant['warmup'], steps // 10), seq_len=seq_len)
  c.checkpoint.keep = 1
  c.train.log_every = 100
  return c


def pretrained_root(args: dict) -> str:
  if not args['pretrained']:
    raise ValueError('stage=finetune needs pretrained=DIR, the directory holding the '
                     'objective=<name> pretraining runs')
  return args['pretrained']


def finetuning(args: dict, settings: Iterable[str], tasks: Iterable[str]):
  """(configs/finetune.py's config for args' task, unlocked; setting; task; sweep root), the
  setting and task checked against the recipe's."""
  setting = choose('setting', args['setting'], settings)
  task = choose('task', args['task'], tasks)
  pretrained = pretrained_root(args)
  return finetune.get_config(f'task={task}').unlock(), setting, task, pretrained


def train_and_dev_only(c: ml_collections.ConfigDict, suffix: str) -> None:
  """The task's train.<suffix> and dev.<suffix> only: no time spent scoring test."""
  c.task.train = f'{c.task.data_dir}/train.{suffix}'
  c.task.dev = f'{c.task.data_dir}/dev.{suffix}'
  c.task.data_dir = ''


def task_budget(c: ml_collections.ConfigDict, args: dict, variant: dict, task: str,
                arch: str) -> None:
  """A fine-tuning run's budget, `variant['tasks'][task]`: `steps` (args' finetune_steps
  first; 0: the config's epochs), then one dev evaluation on the first `eval_limit` dev
  examples (0: all). Lengths, where given: `seq_len` and `target_len` as the config reads them
  (objectives.for_pairs), or `pair_len` tokens per (source, target) pair whatever the
  architecture: a one-stack model reads both within max_seq_len, an `arch` encoder-decoder's
  source gets what the target does not use (equal tokens per pair in every arm)."""
  budget = variant['tasks'][task]
  c.task.eval_limit = budget['eval_limit']
  if 'target_len' in budget:
    c.task.max_target_len = budget['target_len']
  if 'seq_len' in budget:
    c.data.max_seq_len = budget['seq_len']
  if 'pair_len' in budget:
    c.data.max_seq_len = budget['pair_len'] - (
        budget['target_len'] if arch == 'encoder_decoder' else 0)
  base.dev_once(c, steps=args['finetune_steps'] or budget['steps'],
                learning_rate=variant['finetune_lr'])


def sweep(args: dict, arms: Iterable[str], tasks: Iterable[str], settings: Iterable[str], *,
          shared_tokenizer: bool = True):
  """stage=pretrain: one run per arm; stage=finetune: task x setting x seed. Every run reads
  the sweep root (`pretrained`): the pretraining runs and, with `shared_tokenizer`, the one
  tokenizer all arms share."""
  root = [{'arg.pretrained': '{root}'}]
  if args['stage'] == 'pretrain':
    arm_runs = hyper.sweep('arg.objective', list(arms))
    return hyper.product(arm_runs, root) if shared_tokenizer else arm_runs
  return hyper.product(hyper.sweep('arg.task', list(tasks)),
                       hyper.sweep('arg.setting', list(settings)),
                       hyper.sweep('config.train.seed', range(args['seeds'])), root)
