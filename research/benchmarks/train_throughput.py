"""Training throughput (tokens/s) and MFU of the real jitted train step on synthetic batches.

  python -m research.benchmarks.train_throughput [--steps=20] [--shapes=tiny,small]
      [--models=bert,gpt,t5,bart]

MFU = model FLOPs/s (research/flops.py `model_flops`) / this machine's measured peak matmul
FLOP/s, so the figure is comparable across machines. Shapes (one per model family):
  tiny:  2 layers (per stack), d 128, vocab 8k,  batch 32 x 128 (bert-tiny, gpt-tiny, t5-tiny, bart-tiny)
  small: 4 layers (per stack), d 256, vocab 16k, batch 16 x 128 (bert-mini, gpt-mini, t5-mini, bart-mini)
T5 reads 128 source tokens and writes the 29-token span-corruption target; BART reads and
writes 128. Tokens/s counts source + target tokens for encoder-decoders.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from research import (flops, loop, models, objectives, optim, sharding, state as state_lib, steps,
                      train)
from research.models import presets
from research.models.config import ModelConfig
from research.objectives import synthetic

_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps per shape (after 2 warm-up steps).')
_SHAPES = flags.DEFINE_list('shapes', ['tiny', 'small'], 'Shapes to time.')
_MODELS = flags.DEFINE_list('models', ['bert', 'gpt', 't5', 'bart'], 'Model families to time.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'Compute dtype.')

SHAPES = {  # name: (preset suffix, vocab, batch, seq_len)
    'tiny': ('tiny', 8000, 32, 128),
    'small': ('mini', 16000, 16, 128),
}
FAMILIES = {  # family: (preset prefix, objective)
    'bert': ('bert', objectives.MaskedLM()),
    'gpt': ('gpt', objectives.CausalLM()),
    't5': ('t5', objectives.SpanCorruption()),
    'bart': ('bart', objectives.Denoising()),
}


def time_train_step(size: str, objective, vocab: int, batch: int, seq_len: int,
                    num_steps: int, dtype: str, **model_fields) -> dict[str, float]:
  """`model_fields` override the preset's ModelConfig fields (e.g. scan_layers=True)."""
  model_cfg = ModelConfig(**{**presets.architecture(size), 'vocab_size': vocab, 'dtype': dtype,
                             **model_fields})
  model = models.build(model_cfg)
  optim_cfg = ml_collections.ConfigDict(dict(
      learning_rate=1e-4, warmup_steps=10, schedule='linear', end_lr_fraction=0.0,
      weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0))
  tx = optim.make_optimizer(optim_cfg, 1000)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
  abstract, init = state_lib.sharded_init(
      functools.partial(models.init_params, model, length=seq_len), tx, 0, mesh)
  step_fn = loop.compile_step(
      functools.partial(steps.train_step, model=model, objective=objective, tx=tx), abstract, mesh)
  rng = np.random.default_rng(0)
  host_batches = [synthetic.synthetic_batch(objective, batch, seq_len, vocab, rng)
                  for _ in range(4)]
  batches = [sharding.global_batch(b, mesh) for b in host_batches]
  state = init()
  for i in range(2):  # compile + warm-up
    state, metrics = step_fn(state, batches[i % 4])
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(num_steps):
    state, metrics = step_fn(state, batches[i % 4])
  jax.block_until_ready(metrics)
  step_time = (time.perf_counter() - start) / num_steps
  lengths = train.example_lengths(host_batches[0])
  step_flops = train.flops_per_step(model_cfg, objective, batch, lengths)
  peak = flops.peak_flops(jnp.dtype(dtype))
  return {'tokens_per_sec': batch * sum(lengths) / step_time, 'step_ms': 1e3 * step_time,
          'mfu': flops.mfu(step_flops, step_time, peak, jax.device_count()), 'peak': peak}


def main(argv):
  del argv
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}, dtype {_DTYPE.value}')
  print(f"{'shape':6s} {'model':10s} {'objective':16s} {'batch':>8s} {'ms/step':>8s} "
        f"{'tokens/s':>9s} {'MFU':>6s}")
  for shape in _SHAPES.value:
    suffix, vocab, batch, seq_len = SHAPES[shape]
    for family in _MODELS.value:
      prefix, objective = FAMILIES[family]
      size = f'{prefix}-{suffix}'
      r = time_train_step(size, objective, vocab, batch, seq_len, _STEPS.value, _DTYPE.value)
      print(f'{shape:6s} {size:10s} {objective.name:16s} {batch:>4d}x{seq_len:<3d} '
            f'{r["step_ms"]:8.1f} {r["tokens_per_sec"]:9.0f} {100 * r["mfu"]:5.1f}%', flush=True)
  print(f'peak (measured matmul): {r["peak"] / 1e9:.0f} GFLOP/s')


if __name__ == '__main__':
  app.run(main)
