"""Where a run's `config` travels: the modules it passes through and where control climbs back up.

  python -m research.benchmarks.config_trace [--workdir=/tmp/config_trace]

Pretrains a tiny BERT for 2 steps, then fine-tunes it for 2 steps on a small sentiment task,
recording (sys.setprofile) every call into a `research` function whose frame holds a
ConfigDict (an argument, a local or a closed-over variable, or a record with one as an
attribute): the calls that pass the config on.
A module's level is its height in the package's import graph (a module that imports nothing
of the package is 0, one that imports it 1, ...; a package counts as importing its
submodules, which a registry may load by name). Printed for `finetune.run_finetune` and
`train.train_and_evaluate`: the modules entered, the calls from a lower-level module into a
higher one ("climbs back up": a callback, or a helper that reaches for its caller's module),
the returns across modules, and how often each module is entered from another. A design in
which each workflow is a loop around lower-level objects climbs up rarely.
"""
from __future__ import annotations

import ast
import collections
import functools
import os
import pathlib
import sys
from typing import Callable

import ml_collections
from absl import app, flags

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/config_trace', 'Where the tiny runs live.')
PACKAGE = pathlib.Path(__file__).resolve().parents[1]


@functools.cache
def module_name(path: str) -> str | None:
  """'research.tasks.task' of a file inside the package, else None."""
  if not path.endswith('.py'):
    return None
  path = pathlib.Path(path).resolve()
  if PACKAGE not in path.parents:
    return None
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def import_levels() -> dict[str, int]:
  """Height of each package module in its import graph (imports inside functions count)."""
  imports = {}
  for path in PACKAGE.rglob('*.py'):
    name = module_name(str(path))
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('research'):
        found.add(node.module)
        found.update(f'{node.module}.{a.name}' for a in node.names)
      elif isinstance(node, ast.Import):
        found.update(a.name for a in node.names if a.name.startswith('research'))
    imports[name] = {m for m in found if m != name}
  known = set(imports)
  # A package depends on its submodules (a registry may load them by name, importlib); a
  # submodule's import of its own package is then not a dependency (it would be a circle).
  for name in known:
    imports[name] = {m for m in imports[name] if not name.startswith(m + '.')}
    imports[name] |= {m for m in known if m.rpartition('.')[0] == name}

  @functools.cache
  def level(name, seen=frozenset()):
    deps = [d for d in imports[name] if d in known and d not in seen]
    return 1 + max((level(d, seen | {name}) for d in deps), default=-1)
  return {name: level(name) for name in known}


def _is_config(value) -> bool:
  """A ConfigDict, or a record (dataclass, object) with one among its attributes."""
  if isinstance(value, ml_collections.ConfigDict):
    return True
  fields = getattr(value, '__dict__', None)
  return isinstance(fields, dict) and not isinstance(value, type) and any(
      isinstance(v, ml_collections.ConfigDict) for v in fields.values())


def _holds_config(frame) -> bool:
  return any(_is_config(v) for v in frame.f_locals.values())


def trace(fn: Callable, *args) -> dict:
  """Runs fn(*args) and returns what the config-holding calls did (see module docstring)."""
  levels = import_levels()
  entered, climbs, reentries = collections.Counter(), [], collections.Counter()
  returns = 0

  def owner(frame):
    return module_name(frame.f_code.co_filename)

  def package_caller(frame):
    """(module, function) of the nearest enclosing package frame, or None."""
    frame = frame.f_back
    while frame is not None:
      name = owner(frame)
      if name:
        return name, frame.f_code.co_name
      frame = frame.f_back
    return None

  def profile(frame, event, arg):
    nonlocal returns
    if event not in ('call', 'return'):
      return
    callee = owner(frame)
    if callee is None or not _holds_config(frame):
      return
    caller = package_caller(frame)
    if caller is None or caller[0] == callee:
      if event == 'call':
        entered[callee] += 0
      return
    if event == 'return':
      returns += 1
      return
    entered[callee] += 1
    if levels.get(callee, 0) > levels.get(caller[0], 0):
      climbs.append(f'{caller[0]}.{caller[1]} -> {callee}.{frame.f_code.co_name}')
    reentries[callee] += 1

  sys.setprofile(profile)
  try:
    fn(*args)
  finally:
    sys.setprofile(None)
  return {'modules': sorted(entered), 'climbs': climbs, 'returns': returns,
          'entries': reentries, 'levels': levels}


def report(title: str, result: dict):
  levels = result['levels']
  print(f'\n== {title}: {len(result["modules"])} modules, {len(result["climbs"])} climbs back '
        f'up, {result["returns"]} returns across modules')
  for name in sorted(result['modules'], key=lambda m: (-levels.get(m, 0), m)):
    print(f'  level {levels.get(name, 0):2d}  {name:32s} entered from another module '
          f'{result["entries"][name]}x')
  for climb, count in collections.Counter(result['climbs']).most_common():
    print(f'  climb: {climb}' + (f'  (x{count})' if count > 1 else ''))


def main(argv):
  del argv
  from configs import bert as bert_config, finetune as finetune_config
  from research import finetune, reporting, train
  from research.data import corpus
  reporting.quiet_library_logs()
  root = pathlib.Path(_WORKDIR.value)
  import gzip
  text = gzip.open(corpus.default_corpus_path(), 'rt', encoding='utf-8').read()
  (root / 'data').mkdir(parents=True, exist_ok=True)
  corpus_path = root / 'data' / 'austen40.txt'
  corpus_path.write_text('\n\n'.join(text.split('\n\n')[:40]) + '\n', encoding='utf-8')

  config = bert_config.get_config('variant=tiny')
  with config.unlocked():
    config.data.corpus = str(corpus_path)
    config.train.steps, config.train.batch_size, config.train.eval_batch_size = 2, 8, 8
    config.train.eval_batches, config.data.max_seq_len = 1, 32
    config.data.tokenizer.vocab_size, config.optim.warmup_steps = 400, 1
  pretrain = trace(train.train_and_evaluate, config, str(root / 'bert'))

  ft_config = finetune_config.get_config(f'task=sentiment,init_from={root / "bert"}')
  with ft_config.unlocked():
    ft_config.finetune.epochs, ft_config.finetune.warmup_fraction = 0.0, 0.0
    ft_config.train.steps, ft_config.train.batch_size = 2, 8
    ft_config.train.eval_batch_size, ft_config.data.max_seq_len = 8, 24
    ft_config.task.train_limit, ft_config.task.eval_limit = 48, 16
    ft_config.optim.warmup_steps = 1
  fine = trace(finetune.run_finetune, ft_config, str(root / 'sentiment'))
  report('finetune.run_finetune', fine)
  report('train.train_and_evaluate', pretrain)


if __name__ == '__main__':
  app.run(main)
