"""Training throughput (tokens/s) and MFU of the real jitted train step on synthetic batches.

  python -m research.benchmarks.train_throughput [--steps=20] [--max_seconds=0]
      [--shapes=tiny,small,base] [--models=bert,gpt,t5,bart] [--peers --rounds=2]

MFU = model FLOPs/s (research/flops.py `model_flops`) / this machine's measured peak matmul
FLOP/s, so the figure is comparable across machines. Shapes (one per model family):
  tiny:  2 layers (per stack), d 128, vocab 8k,  batch 32 x 128 (bert-tiny, gpt-tiny, t5-tiny, bart-tiny)
  small: 4 layers (per stack), d 256, vocab 16k, batch 16 x 128 (bert-mini, gpt-mini, t5-mini, bart-mini)
  base:  the published base sizes and vocabularies, batch 4 x 128 (bert-base, gpt2-124m,
         t5-base, bart-base)
T5 reads 128 source tokens and writes the 29-token span-corruption target; BART reads and
writes 128. Tokens/s counts source + target tokens for encoder-decoders.

--peers times, in the same run and back to back with ours, HF Flax 4.57 and PyTorch 2.13
training steps of the same networks on the same batches (peers.py; needs the bench extra),
and prints ours / the best peer. --rounds repeats the whole table: the spread between rounds
is the noise of the machine, which matters more than any one figure on a shared CPU.
"""
from __future__ import annotations

import dataclasses
import functools
import gc
import time
from importlib import metadata

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from research import (flops, loop, models, objectives, optim, sharding, state as state_lib, steps,
                      train)
from research.benchmarks import peers
from research.models import presets
from research.models.config import ModelConfig
from research.objectives import synthetic

_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps per measurement (after 2 warm-up steps).')
_SHAPES = flags.DEFINE_list('shapes', ['tiny', 'small'], 'Shapes to time (tiny, small, base).')
_MODELS = flags.DEFINE_list('models', ['bert', 'gpt', 't5', 'bart'], 'Model families to time.')
_MAX_SECONDS = flags.DEFINE_float(
    'max_seconds', 0, 'If > 0, time fewer steps (at least 3) where --steps would take longer '
    'than this (judged from the second warm-up step): large shapes on a slow CPU.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', 'Compute dtype.')


@dataclasses.dataclass(frozen=True)
class Shape:
  sizes: dict[str, str]  # family -> presets.py size
  vocab: int | None  # None: the preset's own vocabulary
  batch: int
  seq_len: int


SHAPES = {
    'tiny': Shape(dict(bert='bert-tiny', gpt='gpt-tiny', t5='t5-tiny', bart='bart-tiny',
                       xlnet='bert-tiny'), 8000, 32, 128),
    'small': Shape(dict(bert='bert-mini', gpt='gpt-mini', t5='t5-mini', bart='bart-mini',
                        xlnet='bert-mini'), 16000, 16, 128),
    'base': Shape(dict(bert='bert-base', gpt='gpt2-124m', t5='t5-base', bart='bart-base',
                       xlnet='bert-base'), None, 4, 128),
}
OBJECTIVES = {
    'bert': objectives.MaskedLM(),
    'gpt': objectives.CausalLM(),
    't5': objectives.SpanCorruption(),
    'bart': objectives.Denoising(),
    'xlnet': objectives.PermutationLM(),  # BERT's network + the query stream (two_stream)
}
MODEL_FIELDS = {'xlnet': {'two_stream': True}}
PEER_FAMILIES = ('bert', 'gpt', 't5', 'bart')  # XLNet: no HF Flax class to compare with
# One optimizer for ours and the peers: BERT's recipe (research/optim.py).
OPTIM = ml_collections.ConfigDict(dict(
    learning_rate=1e-4, warmup_steps=10, schedule='linear', end_lr_fraction=0.0,
    weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-6, clip_norm=1.0))
TOTAL_STEPS = 1000


def our_train_step(model_cfg: ModelConfig, objective,
                   host_batches: list[dict[str, np.ndarray]]) -> peers.Runner:
  """The project's jitted train step (steps.train_step, sharded, state donated)."""
  model = models.build(model_cfg)
  tx = optim.make_optimizer(OPTIM, TOTAL_STEPS)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
  abstract, init = state_lib.sharded_init(
      functools.partial(models.init_params, model, length=host_batches[0]['input_ids'].shape[1]),
      tx, 0, mesh)
  step_fn = loop.compile_step(
      functools.partial(steps.train_step, model=model, objective=objective, tx=tx), abstract, mesh)
  batches = [sharding.global_batch(b, mesh) for b in host_batches]
  state = init()

  def step(i):
    nonlocal state
    state, metrics = step_fn(state, batches[i % len(batches)])
    return metrics

  num_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  return peers.Runner(step, jax.block_until_ready, num_params)


def seconds_per_step(runner: peers.Runner, num_steps: int, max_seconds: float = 0) -> float:
  """Mean wall time of `num_steps` updates after 2 untimed ones (compilation, warm-up); with
  `max_seconds`, fewer (at least 3) when the second warm-up step says they would take longer."""
  runner.block(runner.step(0))
  start = time.perf_counter()
  runner.block(runner.step(1))
  if max_seconds:
    num_steps = max(3, min(num_steps, int(max_seconds / (time.perf_counter() - start))))
  start = time.perf_counter()
  for i in range(num_steps):
    out = runner.step(2 + i)
  runner.block(out)
  return (time.perf_counter() - start) / num_steps


def measure(build, num_steps: int, max_seconds: float) -> tuple[float, int]:
  """(seconds per step, parameters) of a freshly built runner, freed before returning."""
  runner = build()
  seconds, num_params = seconds_per_step(runner, num_steps, max_seconds), runner.num_params
  del runner
  gc.collect()  # drop this model's state before the next one is built
  return seconds, num_params


def model_config(shape: Shape, family: str, dtype: str) -> ModelConfig:
  arch = presets.architecture(shape.sizes[family])
  return ModelConfig(**{**arch, 'vocab_size': shape.vocab or arch['vocab_size'], 'dtype': dtype,
                        **MODEL_FIELDS.get(family, {})})


def host_batches_for(objective, batch: int, seq_len: int, vocab: int) -> list[dict]:
  """4 synthetic batches (the steps cycle through them), the same for ours and the peers."""
  rng = np.random.default_rng(0)
  return [synthetic.synthetic_batch(objective, batch, seq_len, vocab, rng) for _ in range(4)]


def our_mfu(model_cfg: ModelConfig, objective, host_batch: dict, seconds: float) -> float:
  """MFU of `seconds` per step on batches shaped like `host_batch` against this machine's
  peak for the model's compute dtype."""
  step_flops = train.flops_per_step(model_cfg, objective, host_batch['input_ids'].shape[0],
                                    flops.example_lengths(host_batch))
  return flops.mfu(step_flops, seconds, flops.peak_flops(jnp.dtype(model_cfg.dtype)),
                   jax.device_count())


def time_row(shape: Shape, family: str, num_steps: int, max_seconds: float, dtype: str,
             with_peers: bool) -> dict[str, float]:
  """Tokens/s (and MFU) of ours and, with_peers, of HF Flax and PyTorch, back to back."""
  model_cfg = model_config(shape, family, dtype)
  objective = OBJECTIVES[family]
  host_batches = host_batches_for(objective, shape.batch, shape.seq_len, model_cfg.vocab_size)
  tokens = shape.batch * sum(flops.example_lengths(host_batches[0]))
  builders = {'ours': lambda: our_train_step(model_cfg, objective, host_batches)}
  if with_peers and family in PEER_FAMILIES:
    for name, build in (('flax', peers.flax_train_step), ('torch', peers.torch_train_step)):
      builders[name] = functools.partial(build, family, model_cfg, OPTIM, TOTAL_STEPS,
                                         host_batches)
  row = {}
  for name, build in builders.items():
    seconds, num_params = measure(build, num_steps, max_seconds)
    row[name] = tokens / seconds
    row[f'{name}_params'] = num_params
    if name == 'ours':
      row['step_ms'] = 1e3 * seconds
      row['mfu'] = our_mfu(model_cfg, objective, host_batches[0], seconds)
  return row


def time_train_step(size: str, objective, vocab: int, batch: int, seq_len: int,
                    num_steps: int, dtype: str, **model_fields) -> dict[str, float]:
  """Tokens/s, ms/step and MFU of our train step for one preset (`model_fields` override its
  ModelConfig fields, e.g. scan_layers=True): what benchmarks/gpu.py reports."""
  model_cfg = ModelConfig(**{**presets.architecture(size), 'vocab_size': vocab, 'dtype': dtype,
                             **model_fields})
  host_batches = host_batches_for(objective, batch, seq_len, vocab)
  seconds, _ = measure(lambda: our_train_step(model_cfg, objective, host_batches), num_steps, 0)
  return {'tokens_per_sec': batch * sum(flops.example_lengths(host_batches[0])) / seconds,
          'step_ms': 1e3 * seconds, 'mfu': our_mfu(model_cfg, objective, host_batches[0], seconds),
          'peak': flops.peak_flops(jnp.dtype(dtype))}


def main(argv):
  del argv
  for flag, given, known in (('--shapes', _SHAPES.value, SHAPES),
                             ('--models', _MODELS.value, OBJECTIVES)):
    unknown = sorted(set(given) - set(known))
    if unknown:
      raise app.UsageError(f'{flag}: unknown {", ".join(unknown)}; use {", ".join(known)}')
  if peers.PEERS.value:
    peers.check_installed()
  dtype = _DTYPE.value
  peak = flops.peak_flops(jnp.dtype(dtype))
  print(f'device: {jax.devices()[0].device_kind} x {jax.device_count()}, dtype {dtype}, '
        f'peak (measured matmul) {peak / 1e9:.0f} GFLOP/s')
  columns = (f"{'shape':6s} {'model':10s} {'objective':16s} {'batch':>8s} {'params':>7s} "
             f"{'ms/step':>8s} {'tokens/s':>9s} {'MFU':>6s}")
  if peers.PEERS.value:
    columns += f" {'HF Flax':>8s} {'PyTorch':>8s} {'ours/best':>9s}"
  for round_index in range(peers.ROUNDS.value):
    if peers.ROUNDS.value > 1:
      print(f'\nround {round_index + 1} of {peers.ROUNDS.value}')
    print(columns)
    for shape_name in _SHAPES.value:
      shape = SHAPES[shape_name]
      step_ms = {}
      for family in _MODELS.value:
        r = time_row(shape, family, _STEPS.value, _MAX_SECONDS.value, dtype, peers.PEERS.value)
        step_ms[family] = r['step_ms']
        line = (f'{shape_name:6s} {shape.sizes[family]:10s} {OBJECTIVES[family].name:16s} '
                f'{shape.batch:>4d}x{shape.seq_len:<3d} {r["ours_params"] / 1e6:6.1f}M '
                f'{r["step_ms"]:8.1f} {r["ours"]:9.0f} {100 * r["mfu"]:5.1f}%')
        if peers.PEERS.value and family in PEER_FAMILIES:
          line += (f' {r["flax"]:8.0f} {r["torch"]:8.0f} '
                   f'{r["ours"] / max(r["flax"], r["torch"]):8.2f}x')
          mismatch = [f'{n} {r[n + "_params"] / 1e6:.1f}M' for n in ('flax', 'torch')
                      if abs(r[n + '_params'] / r['ours_params'] - 1) > 0.01]
          if mismatch:
            line += f'  (peer params: {", ".join(mismatch)})'
        print(line, flush=True)
      if 'xlnet' in step_ms:  # what the query stream costs (Yang et al. 2019, Sec 2.3)
        print(f'{shape_name:6s} XLNet two-stream step time / ' + ', '.join(
            f'{f} {step_ms["xlnet"] / step_ms[f]:.2f}x' for f in ('bert', 'gpt') if f in step_ms))
  if peers.PEERS.value and 'bert' in _MODELS.value:
    print_bert_flops_note()
  if peers.PEERS.value:
    print(f'peers: HF Flax (transformers {metadata.version("transformers")}: jitted '
          f'value_and_grad + optax) and PyTorch {metadata.version("torch")} (eager, '
          f'{peers.torch_threads()} threads); same networks, batches, loss and AdamW; dropout 0.1')


def print_bert_flops_note() -> None:
  """BERT's peers project every position onto the vocabulary, ours only the predicted ones."""
  objective = OBJECTIVES['bert']
  parts = []
  for shape_name in _SHAPES.value:
    shape = SHAPES[shape_name]
    cfg = model_config(shape, 'bert', _DTYPE.value)
    ours = flops.model_flops(cfg, length=shape.seq_len,
                             vocab_positions=objective.vocab_positions(shape.seq_len))
    theirs = flops.model_flops(cfg, length=shape.seq_len)  # every position through the vocab
    parts.append(f'{shape_name} {ours / shape.seq_len / 1e6:.0f} vs '
                 f'{theirs / shape.seq_len / 1e6:.0f}')
  print(f'BERT: ours projects only the {objective.max_predictions} predicted positions of each '
        f'row onto the vocabulary (google-research/bert), HF every position: tokens/s compare '
        f'throughput, but training MFLOPs per token differ (ours vs HF: {", ".join(parts)}).')


if __name__ == '__main__':
  app.run(main)
