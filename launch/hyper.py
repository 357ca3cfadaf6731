"""Sweep spaces: lists of runs, each run a dict of overrides (data only; no jax import).

A config file's `get_sweep(arg)` returns such a list. Keys are either `config.<dotted.field>`
(passed as `--config.<dotted.field>=value`) or `arg.<name>` (merged into the config file's
argument string, e.g. `arg.task` -> `configs/x.py:...,task=value`). String values may contain
`{root}`, replaced by the sweep's root directory (to point one run at another's workdir).

  product(sweep('arg.task', ['a', 'b']), sweep('config.train.seed', [0, 1, 2]))   # 6 runs
  zipped(sweep('config.optim.learning_rate', [1e-4, 3e-5]),
         sweep('config.train.batch_size', [16, 32]))                              # 2 runs
  random_search(8, seed=0, **{'config.optim.learning_rate': log_uniform(1e-5, 1e-3)})
"""
from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from typing import Any

Run = dict[str, Any]


def sweep(key: str, values: Sequence[Any]) -> list[Run]:
  """One key over several values."""
  return [{key: v} for v in values]


def product(*sweeps: Sequence[Run]) -> list[Run]:
  """Every combination (grid), the last sweep varying fastest."""
  return [{k: v for run in combo for k, v in run.items()} for combo in itertools.product(*sweeps)]


def zipped(*sweeps: Sequence[Run]) -> list[Run]:
  """Runs taken together position by position; all sweeps must be equally long."""
  lengths = {len(s) for s in sweeps}
  if len(lengths) > 1:
    raise ValueError(f'zipped sweeps differ in length: {sorted(lengths)}')
  return [{k: v for run in runs for k, v in run.items()} for runs in zip(*sweeps)]


def uniform(low: float, high: float) -> tuple:
  return ('uniform', low, high)


def log_uniform(low: float, high: float) -> tuple:
  return ('log_uniform', low, high)


def choice(*values: Any) -> tuple:
  return ('choice', *values)


def random_search(num_runs: int, seed: int = 0, **space: tuple) -> list[Run]:
  """`num_runs` independent draws from `space` (key -> uniform / log_uniform / choice),
  reproducible from `seed` (Bergstra & Bengio 2012)."""
  rng = random.Random(seed)

  def draw(spec):
    kind, *args = spec
    if kind == 'uniform':
      return rng.uniform(*args)
    if kind == 'log_uniform':
      return math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))
    if kind == 'choice':
      return rng.choice(args)
    raise ValueError(f'unknown distribution {kind!r}; use uniform, log_uniform or choice')

  return [{key: draw(spec) for key, spec in space.items()} for _ in range(num_runs)]
