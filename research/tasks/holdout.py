"""A dev set held out of train, for data sets that ship train (and test) but no dev.

`--config.task.dev_fraction=F` moves a fraction F of the training examples to a dev split.
Classification and multiple choice are split stratified by label (each class keeps its
share of the examples, as scikit-learn's `StratifiedShuffleSplit`); regression, tagging and
span QA get a plain split.

The split is a pure function of the examples (in file order) and `dev_seed`: each example is
ranked by a hash of (seed, position) with hashlib. No global RNG, and not numpy's Generator,
whose streams NumPy does not promise to keep across versions (NEP 19). So a resumed run,
`--mode=eval` and every process of a multi-host run hold out the same examples.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Hashable, Sequence
from typing import TypeVar

from research.tasks.readers import TaskDataError

T = TypeVar('T')


@dataclasses.dataclass(frozen=True)
class DevSplit:
  """How a dev split was made; logged with the run's 'start' event."""
  fraction: float
  seed: int
  train_size: int  # training examples left (before --config.task.train_limit)
  dev_size: int

  def log_fields(self) -> dict[str, float | int]:
    return {'dev_split/fraction': self.fraction, 'dev_split/seed': self.seed,
            'dev_split/train': self.train_size, 'dev_split/dev': self.dev_size}


def dev_counts(group_sizes: dict[Hashable, int], fraction: float) -> dict[Hashable, int]:
  """How many examples of each group go to dev: floor(fraction * size) each, then one more
  for the groups with the largest remainders until the total is round(fraction * total)
  (largest-remainder apportionment, as scikit-learn's `_approximate_mode`), so no group is
  more than one example off its share. Every group keeps at least one training example (a
  class seen in train stays in train), which may leave the total a little short."""
  total = sum(group_sizes.values())
  quotas = {g: fraction * n for g, n in group_sizes.items()}
  counts = {g: min(math.floor(q), group_sizes[g] - 1) for g, q in quotas.items()}
  # Largest remainder first; ties broken by group name, so the result is deterministic.
  rounding_up = sorted((g for g in quotas if counts[g] < min(math.ceil(quotas[g]),
                                                              group_sizes[g] - 1)),
                       key=lambda g: (counts[g] - quotas[g], str(g)))
  short = math.floor(fraction * total + 0.5) - sum(counts.values())
  for g in rounding_up[:max(short, 0)]:
    counts[g] += 1
  return counts


def _rank(seed: int, position: int) -> bytes:
  return hashlib.blake2b(f'{seed}/{position}'.encode(), digest_size=8).digest()


def hold_out(examples: Sequence[T], fraction: float, seed: int,
             labels: Sequence[Hashable] | None = None) -> tuple[list[T], list[T], DevSplit]:
  """(train, dev, record): `examples` split into train and dev, both in file order.

  labels: one per example to stratify by (None: a plain split).
  """
  if not 0 < fraction < 1:
    raise ValueError(f'--config.task.dev_fraction={fraction} must be between 0 and 1 '
                     '(e.g. 0.1 holds out 10% of train as dev)')
  keys = [None] * len(examples) if labels is None else [str(l) for l in labels]
  groups: dict[Hashable, list[int]] = {}
  for i, key in enumerate(keys):
    groups.setdefault(key, []).append(i)
  counts = dev_counts({g: len(members) for g, members in groups.items()}, fraction)
  dev_positions = set()
  for g, members in groups.items():
    dev_positions.update(sorted(members, key=lambda i: _rank(seed, i))[:counts[g]])
  if not dev_positions:
    raise TaskDataError(f'train has {len(examples)} examples: too few to hold out '
                        f'--config.task.dev_fraction={fraction} of them; raise the fraction '
                        'or provide a dev file (--config.task.dev)')
  train = [e for i, e in enumerate(examples) if i not in dev_positions]
  dev = [e for i, e in enumerate(examples) if i in dev_positions]
  return train, dev, DevSplit(fraction, seed, len(train), len(dev))
