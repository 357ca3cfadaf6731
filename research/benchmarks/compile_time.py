"""Compile time of the train step, scanned layers vs a Python loop over them.

  python -m research.benchmarks.compile_time [--sizes=gpt2-124m,gpt2-1558m,gpt3-6.7b]
      [--batch=8 --seq_len=512]

For each size, the real train step (research/plan.py: abstract state, nothing allocated) is
lowered and compiled on one CPU device with `scan_layers` False and True. With the loop, the
program holds every layer (its size and XLA's work grow with depth); with `nn.scan` it holds
one layer and a loop, so compile time should stay nearly flat in depth.
"""
from __future__ import annotations

from absl import app, flags

from configs import gpt as gpt_config
from research import plan
from research.models import presets

_SIZES = flags.DEFINE_list('sizes', ['gpt2-124m', 'gpt2-1558m', 'gpt3-6.7b'],
                           'Decoder sizes (research/models/presets.py).')
_BATCH = flags.DEFINE_integer('batch', 8, 'Sequences per step.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 512, 'Tokens per sequence.')
_DTYPE = flags.DEFINE_string('dtype', 'bfloat16', 'Compute dtype.')


def compile_once(size: str, scanned: bool) -> plan.Plan:
  config = gpt_config.get_config(f'variant={size}')
  with config.unlocked():
    config.model.scan_layers = scanned
    config.model.dtype = _DTYPE.value
    config.train.batch_size = _BATCH.value
    config.data.max_seq_len = _SEQ_LEN.value
    config.mesh.data, config.mesh.fsdp = 1, 1
  return plan.plan(config, (1, 1, 1), 'none')


def main(argv):
  del argv
  print(f'train step, batch {_BATCH.value} x {_SEQ_LEN.value}, {_DTYPE.value}, one CPU device')
  print(f'{"size":12s} {"layers":>6s} {"unrolled lower+compile":>23s} {"scanned lower+compile":>22s} '
        f'{"ratio":>6s}')
  for size in _SIZES.value:
    times = {}
    for scanned in (False, True):
      p = compile_once(size, scanned)
      times[scanned] = (p.lower_s, p.compile_s)
    layers = presets.SIZES[size]['num_layers']
    cell = lambda t: f'{t[0]:6.1f} + {t[1]:6.1f} s'
    ratio = sum(times[False]) / sum(times[True])
    print(f'{size:12s} {layers:>6d} {cell(times[False]):>23s} {cell(times[True]):>22s} '
          f'{ratio:5.1f}x', flush=True)


if __name__ == '__main__':
  app.run(main)
