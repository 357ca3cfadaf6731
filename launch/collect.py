"""Sweep results -> a markdown table (mean ± std over seeds) and a PNG bar chart.

  python -m launch.collect --root=runs/bert_table5-tiny --rows=setting --cols=task \
      --metric=dev/accuracy [--scale=100] [--out=table.md] [--plot=table.png]

Each run directory is named `key=value,...` by launch/sweep.py; those pairs are the run's
coordinates. A run's value is the last record in its metrics.jsonl holding the first of the
`--metric` names it has (so `dev/accuracy,dev/f1` serves tasks reporting either). Runs are
grouped by the `--rows` and `--cols` keys and aggregated over every other key (so list every
varying key but the seed in --rows); runs without a `--cols` key (e.g. pretraining runs in
the same root) are skipped. Cells read `mean ± std (n)` with n the number of runs (seeds).

Only finished runs count (their final checkpoint exists; launch/outcome.py): a run killed or
still running, whatever its metrics.jsonl holds so far, is listed under the table as
unfinished, and a failed run with its exit status and last error line; the command then exits
with status 1 if any run failed. A record a kill left half-written at the end of a
metrics.jsonl is skipped; table.md is written whole (write-then-rename).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from collections.abc import Sequence

from launch import outcome as outcome_lib
from research import atomic_file


@dataclasses.dataclass
class Run:
  name: str
  params: dict[str, str]
  records: list[dict]
  outcome: outcome_lib.Outcome


@dataclasses.dataclass
class Cell:
  values: list[float]

  @property
  def mean(self) -> float:
    return statistics.fmean(self.values)

  @property
  def std(self) -> float:
    return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

  def __str__(self) -> str:
    if len(self.values) == 1:
      return f'{self.mean:.1f} (1)'
    return f'{self.mean:.1f} ± {self.std:.1f} ({len(self.values)})'


def parse_name(name: str) -> dict[str, str]:
  return dict(item.split('=', 1) for item in name.split(',') if '=' in item)


def read_records(path: str) -> list[dict]:
  """The records of an append-only metrics.jsonl; a line that is not whole JSON (a kill while
  it was written) is skipped."""
  records = []
  with open(path, errors='replace') as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
  return records


def load_runs(root: str) -> list[Run]:
  """Every run directory under `root` that has metrics or a recorded outcome."""
  runs = []
  for name in sorted(os.listdir(root)):
    workdir = os.path.join(root, name)
    path = os.path.join(workdir, 'metrics.jsonl')
    if not (os.path.exists(path) or os.path.exists(os.path.join(workdir, outcome_lib.RECORD))):
      continue
    records = read_records(path) if os.path.exists(path) else []
    runs.append(Run(name, parse_name(name), records, outcome_lib.read(workdir)))
  return runs


def final_value(records: Sequence[dict], metrics: Sequence[str]) -> float | None:
  for metric in metrics:
    values = [r[metric] for r in records if r.get(metric) is not None]
    if values:
      return values[-1]
  return None


def aggregate(runs: Sequence[Run], rows: Sequence[str], col: str, metrics: Sequence[str],
              scale: float = 1.0) -> dict[tuple, dict[str, Cell]]:
  """{row key tuple: {column value: Cell}} over finished runs that have the column key and a
  value."""
  table: dict[tuple, dict[str, Cell]] = {}
  for run in runs:
    if col not in run.params or run.outcome.state != outcome_lib.FINISHED:
      continue
    value = final_value(run.records, metrics)
    if value is None:
      continue
    row = tuple(run.params.get(k, '') for k in rows)
    table.setdefault(row, {}).setdefault(run.params[col], Cell([])).values.append(value * scale)
  return table


def columns_of(table: dict[tuple, dict[str, Cell]]) -> list[str]:
  return sorted({c for cells in table.values() for c in cells})


def markdown(table: dict[tuple, dict[str, Cell]], rows: Sequence[str],
             row_order: Sequence[tuple] | None = None) -> str:
  cols = columns_of(table)
  lines = ['| ' + ' | '.join([*rows, *cols]) + ' |',
           '|' + '---|' * len(rows) + '---:|' * len(cols)]
  for row in row_order or sorted(table):
    if row not in table:
      continue
    cells = [str(table[row][c]) if c in table[row] else '' for c in cols]
    lines.append('| ' + ' | '.join([*row, *cells]) + ' |')
  return '\n'.join(lines) + '\n'


def plot(table: dict[tuple, dict[str, Cell]], path: str, ylabel: str,
         row_order: Sequence[tuple] | None = None, title: str = '') -> None:
  """Grouped bars: one group per column, one bar per row, error bars = std over seeds."""
  import matplotlib  # noqa: PLC0415 (optional dependency: only plotting needs it)
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415
  cols = columns_of(table)
  rows = [r for r in (row_order or sorted(table)) if r in table]
  width = 0.8 / max(len(rows), 1)
  fig, ax = plt.subplots(figsize=(3.0 + 1.6 * len(cols), 3.6))
  for i, row in enumerate(rows):
    xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(cols))]
    cells = [table[row].get(c) for c in cols]
    ax.bar(xs, [c.mean if c else 0 for c in cells], width, yerr=[c.std if c else 0 for c in cells],
           capsize=2, label='/'.join(row))
  ax.set_xticks(range(len(cols)), cols)
  ax.set_ylabel(ylabel)
  lows = [c.mean - c.std for cells in table.values() for c in cells.values()]
  ax.set_ylim(bottom=max(0.0, min(lows, default=0) - 5))
  if title:
    ax.set_title(title)
  if rows:  # an empty table (nothing finished yet) still gets its axes
    ax.legend(fontsize='small', loc='upper left', bbox_to_anchor=(1.0, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(prog='python -m launch.collect', description=__doc__.split('\n')[0])
  p.add_argument('--root', required=True, help='directory holding the runs')
  p.add_argument('--rows', default='setting', help='comma-separated name keys of table rows')
  p.add_argument('--cols', default='task', help='name key of table columns')
  p.add_argument('--metric', default='dev/accuracy', help='comma-separated; first present used')
  p.add_argument('--scale', type=float, default=100.0, help='100: fractions -> percent')
  p.add_argument('--out', help='markdown file (default: print only)')
  p.add_argument('--plot', help='PNG file for the bar chart')
  args = p.parse_args(argv)
  rows, metrics = args.rows.split(','), args.metric.split(',')
  runs = load_runs(args.root)
  table = aggregate(runs, rows, args.cols, metrics, args.scale)
  others = {run.name: run.outcome for run in runs
            if run.outcome.state != outcome_lib.FINISHED}
  if not table and not others:
    sys.exit(f'no run under {args.root} has a {args.cols}= key and one of {metrics}')
  text = markdown(table, rows) if table else '(no finished run yet)\n'
  if others:
    text += '\nNot in the table (the same sweep command retries these):\n\n' + outcome_lib.table(
        others)
  print(text)
  if args.out:
    atomic_file.write_text(args.out, text)
  if args.plot:
    plot(table, args.plot, ylabel=args.metric)
  if any(o.state == outcome_lib.FAILED for o in others.values()):
    sys.exit(1)


if __name__ == '__main__':
  main()
