"""Will a config fit an accelerator? Memory and compile planning without allocating a weight.

  python -m research.plan --config=configs/gpt.py:variant=gpt3-2.7b --devices=8 \
      --device_memory=80G [--config.mesh.fsdp=8 --config.model.remat_policy=full ...]
  python -m research.plan --config=configs/gpt.py:variant=gpt3-13b --devices=8 \
      --device_memory=80G --recommend

The train step (steps.train_step, jitted with the state's shardings and donation exactly as
training jits it, loop.compile_step) is lowered and compiled for a mesh of `--devices`
devices from `jax.ShapeDtypeStruct`s alone: parameters, optimizer state and batch are shapes
with shardings, never arrays. On a host without the accelerators the devices are simulated
CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count, set here before JAX starts),
so the figures are XLA's buffer assignment of the *CPU* compilation of the partitioned
program: the same parameter, optimizer and batch bytes per device as on the accelerator, and
temporaries of the same algorithm (activations kept for the backward pass, gradients,
workspace) that the accelerator compiler lays out somewhat differently. The analytic estimate
beside it (`analytic`) counts the same things from formulas.

Defaults for planning at scale: `--config.model.scan_layers` defaults to True here (compile
time flat in depth) and `--config.model.dtype` to bfloat16 (parameters stay float32). A
device "fits" when the compiled peak is at most --memory_fraction of --device_memory (JAX
preallocates 75% of an accelerator by default: run with XLA_PYTHON_CLIENT_MEM_FRACTION set
to the same fraction).

--recommend tries meshes (data x fsdp x tensor over the devices) and remat policies from the
cheapest upwards (`recommend`) and prints the first that fits; candidates the analytic
estimate puts far over the budget are skipped without compiling.

The analytic activations follow Korthikanti et al. (2022), an idealised implementation (16-bit
softmax output, fused kernels); this code's attention keeps its masked logits and softmax in
float32, so the compiled figure is higher (see docs/scaling.md).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from research import (flops, loop, models, objectives, optim, reporting, sharding,
                      state as state_lib, steps)
from research.models.config import ModelConfig
from research.objectives import synthetic

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:arg].',
                                          lock_config=True)
_DEVICES = flags.DEFINE_integer('devices', 8, 'Devices of the mesh (simulated on CPU).')
_MEMORY = flags.DEFINE_string('device_memory', '80G', 'Memory of one device: 80G, 141GB, 16GiB.')
_FRACTION = flags.DEFINE_float('memory_fraction', 0.9,
                               'Share of the device memory the run may use.')
_RECOMMEND = flags.DEFINE_bool('recommend', False,
                               'Search meshes and remat policies for the cheapest that fits.')
_MAX_TENSOR = flags.DEFINE_integer('max_tensor', 8, '--recommend: largest tensor axis tried.')

# What recomputation costs, cheapest first: 'dots_saveable' recomputes only elementwise ops,
# 'dots_with_no_batch_dims_saveable' also attention's score and weighted-sum matmuls, 'full'
# the whole forward pass of each block (~1/3 more FLOPs per step).
REMAT_ORDER = ('none', 'dots_saveable', 'dots_with_no_batch_dims_saveable', 'full')
# Skip compiling a --recommend candidate whose analytic peak exceeds the budget this much.
_ANALYTIC_SLACK = 1.5
GB = 1e9


def parse_bytes(text: str) -> float:
  """'80G', '80GB' (10^9) or '80GiB' (2^30) -> bytes."""
  match = re.fullmatch(r'\s*([\d.]+)\s*([KMGT]?)(i?)B?\s*', text, re.IGNORECASE)
  if not match:
    raise ValueError(f'--device_memory={text!r}: use a size such as 80G, 141GB or 16GiB')
  number, unit, binary = match.groups()
  power = 'KMGT'.find(unit.upper()) + 1 if unit else 0
  return float(number) * (1024 if binary else 1000) ** power


@dataclasses.dataclass
class Plan:
  """Bytes per device of one (config, mesh, remat) point."""
  mesh: tuple[int, int, int]  # data, fsdp, tensor
  remat: str
  params: float
  opt_state: float
  batch: float
  compiled_temp: float | None = None  # XLA buffer assignment: temporaries of the step
  compiled_peak: float | None = None  # arguments + temporaries + non-aliased outputs
  lower_s: float = 0.0
  compile_s: float = 0.0
  analytic: dict = dataclasses.field(default_factory=dict)

  @property
  def peak(self) -> float:
    return self.compiled_peak if self.compiled_peak is not None else self.analytic['peak']


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config with the planning defaults (scanned layers, bfloat16) where unset."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if config.model.scan_layers is None:
      config.model.scan_layers = True
    if config.model.dtype is None:
      config.model.dtype = 'bfloat16'
  return config


def model_config(config) -> ModelConfig:
  cfg = ModelConfig.from_config(config.model)
  if cfg.vocab_size <= 1:
    raise ValueError(f'{config.model.size} has no vocabulary size of its own; set '
                     '--config.model.vocab_size')
  return cfg


def per_device_bytes(tree) -> float:
  """Bytes one device holds of a pytree of ShapeDtypeStructs with shardings."""
  total = 0
  for x in jax.tree.leaves(tree):
    shard = x.sharding.shard_shape(x.shape)
    total += math.prod(shard) * jnp.dtype(x.dtype).itemsize
  return float(total)


def abstract_batch(config, cfg: ModelConfig, objective, mesh):
  """ShapeDtypeStructs of one global batch in the objective's layout, split over the mesh."""
  host = synthetic.synthetic_batch(objective, config.train.batch_size, config.data.max_seq_len,
                         cfg.vocab_size, np.random.default_rng(0))
  batch_sharding = sharding.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
          for k, v in host.items()}


def analytic(cfg: ModelConfig, config, mesh_shape, remat: str, n_params: int,
             lengths: tuple[int, int]) -> dict:
  """Bytes per device from formulas.

  States: float32 parameters (4 bytes each), Adam's two float32 moments (8), float32
  gradients (4), split over fsdp x tensor. Activations kept for the backward pass, per layer
  and micro-batch of b sequences of s tokens, width h, a heads, tensor size t (Korthikanti et
  al. 2022, "Reducing Activation Recomputation in Large Transformer Models", Sec 4.1, 16-bit
  activations, with dropout masks): s*b*h*(10 + 24/t + 5*a*s/(h*t)) bytes; 'full' remat keeps
  only each layer's 16-bit input (2*s*b*h) plus one layer's full set during its
  recomputation; the dots policies keep the matmul outputs (q, k, v, attention output, the
  two MLP matmuls, and for 'dots_saveable' attention's a*s*s scores and a*s*d weighted sums).
  Plus the float32 logits and their gradient (2 x 4*b*s*V/t).
  """
  data, fsdp, tensor = mesh_shape
  shards = fsdp * tensor
  params = 4 * n_params / shards
  opt_state = 8 * n_params / shards
  grads = 4 * n_params / shards
  b = config.train.batch_size / (data * fsdp) / config.train.grad_accum_steps
  s_src, s_tgt = lengths
  h, a, t = cfg.d_model, cfg.num_heads, tensor
  d_attn = cfg.num_heads * cfg.head_dim

  def layer_bytes(s: int, cross_s: int = 0) -> float:
    full = s * b * h * (10 + 24 / t) + 5 * a * s * s * b / t
    if cross_s:  # a cross-attention sublayer: queries over s, keys/values over cross_s
      full += s * b * h * 8 / t + 5 * a * s * cross_s * b / t
    dots = 2 * b * s * (3 * d_attn + h + 2 * cfg.d_ff) / t
    scores = 2 * b * a * s * s / t + 2 * b * s * d_attn / t
    return {'none': full, 'full': 2 * s * b * h, 'dots_saveable': dots + scores,
            'dots_with_no_batch_dims_saveable': dots}[remat]

  if cfg.arch == 'encoder_decoder':
    kept = cfg.num_layers * layer_bytes(s_src) + cfg.decoder_layers * layer_bytes(s_tgt, s_src)
    recompute = 0 if remat == 'none' else s_tgt * b * h * (10 + 24 / t) + 5 * a * s_tgt ** 2 * b / t
    rows = s_tgt
  else:
    kept = cfg.num_layers * layer_bytes(s_src)
    recompute = 0 if remat == 'none' else s_src * b * h * (10 + 24 / t) + 5 * a * s_src ** 2 * b / t
    rows = s_src
  logits = 2 * 4 * b * rows * cfg.vocab_size / t
  activations = kept + recompute + logits
  return {'params': params, 'opt_state': opt_state, 'gradients': grads,
          'activations': activations, 'peak': params + opt_state + grads + activations}


def plan(config: ml_collections.ConfigDict, mesh_shape, remat: str, compile_: bool = True) -> Plan:
  """Lowers and compiles the train step of `config` on a (data, fsdp, tensor) mesh."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_shape
    config.model.remat_policy = remat
    config.model.remat = False
  cfg = model_config(config)
  objective = objectives.from_config(config.objective, cfg)
  objective.check_arch(cfg.arch)
  mesh = sharding.make_mesh(config.mesh)
  model = models.build(cfg)
  tx = optim.make_optimizer(config.optim, config.train.steps)
  init_params = functools.partial(models.init_params, model, length=config.data.max_seq_len)
  abstract, _ = state_lib.sharded_init(init_params, tx, config.train.seed, mesh)
  batch = abstract_batch(config, cfg, objective, mesh)
  lengths = flops.example_lengths(batch)
  n_params = models.param_count(abstract.params)
  result = Plan(mesh=tuple(mesh_shape), remat=remat, params=per_device_bytes(abstract.params),
                opt_state=per_device_bytes(abstract.opt_state), batch=per_device_bytes(batch),
                analytic=analytic(cfg, config, mesh_shape, remat, n_params, lengths))
  if not compile_:
    return result
  step = loop.compile_step(functools.partial(
      steps.train_step, model=model, objective=objective, tx=tx,
      grad_accum_steps=config.train.grad_accum_steps,
      schedule=optim.make_schedule(config.optim, config.train.steps)), abstract, mesh)
  start = time.perf_counter()
  lowered = step.lower(abstract, batch)
  result.lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  result.compile_s = time.perf_counter() - start
  stats = compiled.memory_analysis()
  result.compiled_temp = float(stats.temp_size_in_bytes)
  # Donated inputs alias their outputs: they are counted once, among the arguments.
  result.compiled_peak = float(stats.argument_size_in_bytes + stats.temp_size_in_bytes
                               + stats.output_size_in_bytes - stats.alias_size_in_bytes)
  return result


def divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def mesh_name(mesh) -> str:
  return 'data {} x fsdp {} x tensor {}'.format(*mesh)


def report(cfg: ModelConfig, config, p: Plan, budget: float):
  a = p.analytic
  rows = [('parameters (float32)', p.params, a['params']),
          ('optimizer state (Adam)', p.opt_state, a['opt_state']),
          ('batch', p.batch, None),
          ('gradients', None, a['gradients']),
          ('activations kept for backward', None, a['activations']),
          ('temporaries (activations, gradients, workspace)', p.compiled_temp, None),
          ('peak', p.compiled_peak, a['peak'])]
  fmt = lambda x: '' if x is None else f'{x / GB:.2f} GB'
  print(f'mesh {mesh_name(p.mesh)}, remat {p.remat}')
  print(f'  {"per device":50s} {"compiled":>10s} {"analytic":>10s}')
  for name, compiled, estimate in rows:
    print(f'  {name:50s} {fmt(compiled):>10s} {fmt(estimate):>10s}')
  verdict = 'yes' if p.peak <= budget else 'NO'
  print(f'  fits {budget / GB:.1f} GB: {verdict} ({100 * p.peak / budget:.0f}% of it)')
  if p.compiled_peak is not None:
    print(f'  lower {p.lower_s:.1f} s, compile {p.compile_s:.1f} s')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  reporting.quiet_library_logs()
  # Simulated devices, set before JAX's first use of its backend (no accelerator needed).
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={_DEVICES.value}')
  try:
    budget = parse_bytes(_MEMORY.value) * _FRACTION.value
    config = resolve(_CONFIG.value)
    cfg = model_config(config)
    if jax.device_count() != _DEVICES.value:
      raise ValueError(f'JAX sees {jax.device_count()} devices, not --devices='
                       f'{_DEVICES.value}; run on a host without accelerators (JAX_PLATFORMS=cpu)')
    print(f'{config.model.size}: {models.param_count(cfg) / 1e9:.2f}B parameters, '
          f'{cfg.arch}, batch {config.train.batch_size} x {config.data.max_seq_len}'
          f'{f" in {config.train.grad_accum_steps} micro-batches" if config.train.grad_accum_steps > 1 else ""}, '
          f'{cfg.dtype}, {"scanned" if cfg.scan_layers else "unrolled"} layers; '
          f'{_DEVICES.value} devices x {_MEMORY.value} (usable {budget / GB:.1f} GB)')
    if not _RECOMMEND.value:
      mesh = sharding.mesh_shape(config.mesh, _DEVICES.value)
      report(cfg, config, plan(config, mesh, cfg.remat_mode), budget)
      return
    recommend(config, cfg, budget, _DEVICES.value, _MAX_TENSOR.value)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def recommend(config, cfg: ModelConfig, budget: float, devices: int, max_tensor: int = 8,
              plan_fn=None) -> Plan | None:
  """The cheapest (tensor, remat, fsdp) that fits, in that order of preference: tensor
  parallelism communicates in every layer (smallest first); recomputation costs FLOPs that
  nothing hides (REMAT_ORDER); FSDP's all-gathers overlap with compute (fewest shards first).
  With the global batch fixed, each device's micro-batch depends on the tensor size only, so
  for a (tensor, remat) pair the largest FSDP size needs the least memory: if it does not fit,
  no smaller one will, and that pair is skipped after one compilation. `plan_fn` stands in
  for `plan` in tests."""
  plan_fn = plan_fn or plan
  print(f'{"data x fsdp x tensor":21s} {"remat":34s} {"analytic":>9s} {"compiled":>9s} '
        f'{"compile":>8s}')

  def attempt(mesh, remat) -> Plan | None:
    estimate = plan_fn(config, mesh, remat, compile_=False)
    name = '{} x {} x {}'.format(*mesh)
    if estimate.analytic['peak'] > _ANALYTIC_SLACK * budget:
      print(f'{name:21s} {remat:34s} {estimate.analytic["peak"] / GB:8.1f}G '
            f'{"(skipped)":>9s}', flush=True)
      return None
    p = plan_fn(config, mesh, remat)
    print(f'{name:21s} {remat:34s} {p.analytic["peak"] / GB:8.1f}G {p.peak / GB:8.1f}G '
          f'{p.compile_s:7.1f}s', flush=True)
    return p if p.peak <= budget else None

  for tensor in divisors(devices):
    if tensor > max_tensor or cfg.num_heads % tensor:
      continue
    if config.train.batch_size % (devices // tensor):
      continue  # the batch does not split over the data axes
    shard_counts = divisors(devices // tensor)
    for remat in REMAT_ORDER:
      mesh_of = lambda fsdp, tensor=tensor: (devices // tensor // fsdp, fsdp, tensor)
      best = attempt(mesh_of(shard_counts[-1]), remat)
      if best is None:
        continue
      for fsdp in shard_counts[:-1]:  # fewer shards, if they fit too
        smaller = attempt(mesh_of(fsdp), remat)
        if smaller is not None:
          best = smaller
          break
      data, fsdp, _ = best.mesh
      print(f'\nrecommended: --config.mesh.data={data} --config.mesh.fsdp={fsdp} '
            f'--config.mesh.tensor={tensor} --config.model.remat_policy={remat}\n')
      report(cfg, config, best, budget)
      return best
  print('\nnothing fits: lower --config.train.batch_size, raise '
        '--config.train.grad_accum_steps, or use more devices')
  return None


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
