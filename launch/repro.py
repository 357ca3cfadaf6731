"""The one command of a pretrain-then-fine-tune reproduction: both sweeps, then the table.

  python -m launch.repro --config=configs/repro/bert_table5.py:variant=tiny \
      [--root=runs/bert_table5-tiny] [--parallel=1] [--dry_run | --tabulate_only]

Runs the recipe's `stage=pretrain` sweep, then its `stage=finetune` sweep (launch/sweep.py,
locally; finished runs are skipped, interrupted ones resume), then writes `<root>/table.md`
(our mean ± std over seeds beside the paper's numbers, which the recipe module lists in
PAPER) and `<root>/table.png`. `--tabulate_only` writes them from the runs finished so far
(while the sweep runs, or after it was stopped) and runs nothing. On a cluster, run the two
stages with `launch.sweep --slurm` one after the other and then this command, which then only
tabulates.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import sys
import time

from launch import collect, outcome, sweep
from research import atomic_file

def _load_recipe(path: str):
  spec = importlib.util.spec_from_file_location('recipe', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _with_stage(config: str, stage: str) -> str:
  path, arg = sweep.split_config(config)
  return f'{path}:{sweep.merge_arg(arg, {"stage": stage})}'


def pretraining_rows(root: str) -> str:
  """Held-out metrics of each pretraining run (context for the fine-tuning table), with the
  unigram model's row: a run whose numbers match it has learned nothing beyond token counts.
  `where masked` is the accuracy where the input hides the target: MLM's [MASK]ed and random
  tokens (not the ones left unchanged), span corruption's dropped text (not its sentinels)."""
  lines = ['| pretraining run | steps | held-out loss | accuracy | where masked | '
           'perplexity |', '|---|---:|---:|---:|---:|---:|']
  baseline = None
  for run in collect.load_runs(root):
    if 'objective' not in run.params:
      continue
    baseline = baseline or next((r for r in run.records if r.get('event') == 'start'
                                 and 'baseline/unigram_cross_entropy' in r), None)
    step = max((r['step'] for r in run.records if 'eval/loss' in r), default=0)
    cells = [run.name, str(step)]
    for keys, spec in ((['eval/loss'], '.3f'), (['eval/mlm_accuracy', 'eval/accuracy'], '.3f'),
                       (['eval/mlm_masked_accuracy', 'eval/span_accuracy'], '.3f'),
                       (['eval/perplexity'], '.1f')):
      value = collect.final_value(run.records, keys)
      cells.append('' if value is None else format(value, spec))
    lines.append('| ' + ' | '.join(cells) + ' |')
  if baseline:
    lines.append(f"| unigram model (most frequent token) | | "
                 f"{baseline['baseline/unigram_cross_entropy']:.3f} | "
                 f"{baseline['baseline/most_frequent_token_accuracy']:.3f} | "
                 f"{baseline['baseline/most_frequent_token_accuracy']:.3f} | "
                 f"{baseline['baseline/unigram_perplexity']:.1f} |")
  return '\n'.join(lines) + '\n'


def record_wall_time(root: str, seconds: float | None) -> tuple[float, int]:
  """Adds one invocation's wall time to `<root>/wall_time.json` (a recipe stopped and resumed
  is timed over all its invocations; None adds nothing); returns (total seconds, invocations)."""
  path = os.path.join(root, 'wall_time.json')
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError):
    record = {'seconds': 0.0, 'invocations': 0}
  if seconds is not None:
    record = {'seconds': record['seconds'] + seconds, 'invocations': record['invocations'] + 1}
    with open(path, 'w') as f:
      json.dump(record, f)
  return record['seconds'], record['invocations']


def _column(task: str, metric: str, count: int) -> str:
  return task if count == 1 else f'{task} {metric.split("/")[-1]}'


def tabulate(recipe, runs) -> dict:
  """{(setting,): {column: Cell}} of the recipe's METRICS (task -> ((metric, scale), ...)),
  one column per task and metric, plus one row per trivial baseline (BASELINES: task ->
  (row label, start-event key, metric column it sits in)) read from the runs' start events."""
  table = {}
  for task, metrics in recipe.METRICS.items():
    task_runs = [r for r in runs if r.params.get('task') == task]
    for metric, scale in metrics:
      column = _column(task, metric, len(metrics))
      for row, cells in collect.aggregate(task_runs, ['setting'], 'task', [metric],
                                          scale).items():
        table.setdefault(row, {})[column] = cells[task]
    label, key, metric = recipe.BASELINES.get(task, (None, None, None))
    values = [r[key] for run in task_runs for r in run.records
              if r.get('event') == 'start' and r.get(key) is not None]
    if values:
      scale = dict(metrics)[metric]
      table.setdefault((label,), {})[_column(task, metric, len(metrics))] = collect.Cell(
          [values[0] * scale])
  return table


def row_order(recipe) -> list[tuple]:
  labels = dict.fromkeys(label for label, _, _ in recipe.BASELINES.values())
  return [(s,) for s in recipe.SETTINGS] + [(label,) for label in labels]


def comparison(recipe, table: dict) -> str:
  """Ours beside the paper: one row per setting, our columns then the paper's."""
  ours = collect.columns_of(table)
  header = ['setting', 'paper row', *ours, *(f'{c} (paper)' for c in recipe.PAPER_COLUMNS)]
  lines = ['| ' + ' | '.join(header) + ' |',
           '|---|---|' + '---:|' * (len(ours) + len(recipe.PAPER_COLUMNS))]
  for setting in recipe.SETTINGS:
    cells = [setting, recipe.PAPER_ROW_NAMES.get(setting, '')]
    cells += [str(table.get((setting,), {}).get(c, '')) for c in ours]
    paper = recipe.PAPER.get(setting)
    cells += [f'{v:g}' for v in paper] if paper else [''] * len(recipe.PAPER_COLUMNS)
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m launch.repro', description=__doc__.split('\n')[0])
  p.add_argument('--config', required=True, help='recipe config file[:arg] (configs/repro/...)')
  p.add_argument('--root', help='where all runs live (default: runs/<recipe>-<arg>)')
  p.add_argument('--parallel', type=int, default=1, help='runs at a time')
  mode = p.add_mutually_exclusive_group()
  mode.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
  mode.add_argument('--tabulate_only', action='store_true',
                    help='write the table from the runs finished so far, run nothing')
  args = p.parse_args(argv)
  path, _ = sweep.split_config(args.config)
  root = os.path.abspath(args.root or sweep.default_root(args.config))
  start = time.time()
  finished = {}
  for stage in ('pretrain', 'finetune'):
    config = _with_stage(args.config, stage)
    specs = sweep.expand(config, root, sweep.load_sweep(config))
    todo = [s for s in specs if not outcome.is_finished(s.workdir)]
    print(f'[repro] {stage}: {len(specs)} runs, {len(todo)} to run', flush=True)
    finished[stage] = (len(specs) - len(todo), len(specs))
    if args.dry_run:
      for spec in todo:
        print(shlex.join(spec.command()))
    if args.dry_run or args.tabulate_only:
      continue
    try:
      status = sweep.run_local(todo, args.parallel)
    except sweep.Stopped as stopped:  # the time spent still counts towards the recipe's
      total, invocations = record_wall_time(root, time.time() - start)
      sys.exit(f'[repro] {stopped} ({total / 60:.1f} min over {invocations} invocation(s) '
               'so far)')
    failed = [n for n, code in status.items() if code]
    if failed:
      print(f'[repro] {stage} runs failed (see their log.txt): {", ".join(failed)}')
      sys.exit(1)
    finished[stage] = (len(specs), len(specs))
  if args.dry_run:
    return
  recipe = _load_recipe(path)
  table = tabulate(recipe, collect.load_runs(root))
  order = row_order(recipe)
  wall = time.time() - start
  total, invocations = record_wall_time(root, None if args.tabulate_only else wall)
  this_one = '' if args.tabulate_only else f'this one {wall / 60:.1f} min; '
  parallel = '' if args.tabulate_only else f' --parallel={args.parallel}'
  done = [f'{n} of {count} {stage} runs' for stage, (n, count) in finished.items()
          if n < count]
  units = '; '.join(f'{task}: {", ".join(f"{m} x {k:g}" for m, k in metrics)}'
                    for task, metrics in recipe.METRICS.items())
  text = '\n'.join([
      f'# {os.path.basename(path)} ({args.config})', '',
      f'Command: `python -m launch.repro --config={args.config}{parallel}`; '
      f'wall time {total / 60:.1f} min over {invocations} invocation(s) ({this_one}a re-run '
      'skips finished runs).', '',
      *([f'**Partial: finished so far {", ".join(done)}.**', ''] if done else []),
      f'Dev metrics, mean ± std (number of seeds); {units}:', '',
      collect.markdown(table, ['setting'], order),
      f'Beside the paper ({recipe.PAPER_NAME}):', '',
      comparison(recipe, table),
      pretraining_rows(root)])
  atomic_file.write_text(os.path.join(root, 'table.md'), text)
  # Perplexities (lower is better, another scale) stay out of the bar chart.
  bars = {row: {c: v for c, v in cells.items() if 'perplexity' not in c}
          for row, cells in table.items()}
  collect.plot(bars, os.path.join(root, 'table.png'), ylabel='dev metric',
               row_order=order, title=args.config)
  print(text)
  print(f'[repro] wrote {root}/table.md and table.png')


if __name__ == '__main__':
  try:
    main()
  except (ValueError, FileNotFoundError) as e:  # bad input: one line, not a traceback
    sys.exit(f'error: {e}')
