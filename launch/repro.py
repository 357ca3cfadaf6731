"""The one command of a pretrain-then-fine-tune reproduction: both sweeps, then the table.

  python -m launch.repro --config=configs/repro/bert_table5.py:variant=tiny \
      [--root=runs/bert_table5-tiny] [--parallel=1] [--dry_run]

Runs the recipe's `stage=pretrain` sweep, then its `stage=finetune` sweep (launch/sweep.py,
locally; finished runs are skipped, interrupted ones resume), then writes `<root>/table.md`
(our mean ± std over seeds beside the paper's numbers, which the recipe module lists in
PAPER) and `<root>/table.png`. On a cluster, run the two stages with `launch.sweep --slurm`
one after the other and then this command, which then only tabulates.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
import time

from launch import collect, sweep

def _load_recipe(path: str):
  spec = importlib.util.spec_from_file_location('recipe', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _with_stage(config: str, stage: str) -> str:
  path, arg = sweep.split_config(config)
  return f'{path}:{sweep.merge_arg(arg, {"stage": stage})}'


def pretraining_rows(root: str) -> str:
  """Held-out metrics of each pretraining run (context for the fine-tuning table)."""
  lines = ['| pretraining run | steps | held-out loss | MLM accuracy | perplexity |',
           '|---|---:|---:|---:|---:|']
  for run in collect.load_runs(root):
    if 'objective' not in run.params:
      continue
    step = max((r['step'] for r in run.records if 'eval/loss' in r), default=0)
    cells = [run.name, str(step)]
    for key, spec in (('eval/loss', '.3f'), ('eval/mlm_accuracy', '.3f'),
                      ('eval/perplexity', '.1f')):
      value = collect.final_value(run.records, [key])
      cells.append('' if value is None else format(value, spec))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def comparison(recipe, table: dict) -> str:
  """Ours beside the paper: one row per setting, (ours, paper analogue) column pairs."""
  header = ['setting', 'paper row']
  for task in recipe.TASKS:
    header += [f'{task} (ours)', f'{recipe.ANALOGUE[task]} (paper)']
  lines = ['| ' + ' | '.join(header) + ' |', '|---|---|' + '---:|' * (2 * len(recipe.TASKS))]
  for setting in recipe.SETTINGS:
    cells = [setting, recipe.PAPER_ROW_NAMES[setting]]
    for task in recipe.TASKS:
      ours = table.get((setting,), {}).get(task)
      paper = recipe.PAPER.get(setting, {}).get(recipe.ANALOGUE[task])
      cells += [str(ours) if ours else '', '' if paper is None else f'{paper:.1f}']
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m launch.repro', description=__doc__.split('\n')[0])
  p.add_argument('--config', required=True, help='recipe config file[:arg] (configs/repro/...)')
  p.add_argument('--root', help='where all runs live (default: runs/<recipe>-<arg>)')
  p.add_argument('--parallel', type=int, default=1, help='runs at a time')
  p.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
  args = p.parse_args(argv)
  path, _ = sweep.split_config(args.config)
  root = os.path.abspath(args.root or sweep.default_root(args.config))
  start = time.time()
  for stage in ('pretrain', 'finetune'):
    config = _with_stage(args.config, stage)
    specs = sweep.expand(config, root, sweep.load_sweep(config))
    todo = [s for s in specs if not sweep.is_finished(s.workdir)]
    print(f'[repro] {stage}: {len(specs)} runs, {len(todo)} to run', flush=True)
    if args.dry_run:
      for spec in todo:
        print(shlex.join(spec.command()))
      continue
    failed = [n for n, code in sweep.run_local(todo, args.parallel).items() if code]
    if failed:
      print(f'[repro] {stage} runs failed (see their log.txt): {", ".join(failed)}')
      sys.exit(1)
  if args.dry_run:
    return
  recipe = _load_recipe(path)
  metrics = sorted(set(recipe.METRICS.values()))
  table = collect.aggregate(collect.load_runs(root), ['setting'], 'task', metrics, scale=100)
  order = [(s,) for s in recipe.SETTINGS]
  wall = time.time() - start
  text = '\n'.join([
      f'# {os.path.basename(path)} ({args.config})', '',
      f'Command: `python -m launch.repro --config={args.config}`; wall time of this '
      f'invocation: {wall / 60:.1f} min (runs finished earlier are not re-run).', '',
      f'{", ".join(metrics)} x 100, mean ± std (number of seeds):', '',
      collect.markdown(table, ['setting'], order),
      'Beside the paper (BERT Table 5, BERT_BASE dev; accuracy, SQuAD F1):', '',
      comparison(recipe, table),
      pretraining_rows(root)])
  with open(os.path.join(root, 'table.md'), 'w') as f:
    f.write(text)
  collect.plot(table, os.path.join(root, 'table.png'), ylabel=f'{", ".join(metrics)} (%)',
               row_order=order, title=args.config)
  print(text)
  print(f'[repro] wrote {root}/table.md and table.png')


if __name__ == '__main__':
  try:
    main()
  except (ValueError, FileNotFoundError) as e:  # bad input: one line, not a traceback
    sys.exit(f'error: {e}')
