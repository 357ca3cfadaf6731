"""Generation speed of a GPT-2-small-shaped model (124M, random init) with and without the KV cache.

  python -m research.benchmarks.generation [--batch_sizes=1,8] [--prompt_len=32]
      [--new_tokens=128] [--contexts=64,256,512,960]

With the cache: `research.generate.decode` end to end (prefill + jitted while_loop of decode
steps, greedy, no stop token), new tokens/s = batch * new_tokens / wall time, best of
--repeats. Without the cache every token re-runs the model over the whole prefix; that loop
would take minutes at batch 8, so its time is the sum over the generated tokens of the
measured latency of one full forward pass at that prefix length (measured at the first, middle
and last length, linearly interpolated between). The latency table shows one token's cost
as the context grows: near flat with the cache (one token through the weights plus attention
over the cache), growing with it without.

The floor column is tokens/s if a decoding step were its matrix products and nothing else:
[batch, d] times every weight matrix the step reads in full (attention and MLP kernels, the
tied token table as the LM head reads it), chained so each waits for the one before, as a
step's do. Every step reads all the weights (500 MB for GPT-2 124M in float32) whatever the
batch, so at batch 1 this is the memory-bandwidth floor of the machine, and at larger batches
what this backend's matmuls allow; no cache, attention, sampling or loop is in it, so ours /
floor is how much of a step is left to win, and floor / a peer is the most any program using
these matmuls could be ahead of it. Only for weights far larger than the CPU's caches: at
--size=gpt-tiny (28 MB) the chain's per-product overhead dominates and ours exceeds it
(1.12-1.15x at batch 1 and 8).

--peers times, in the same run, HF Flax 4.57 `generate` (the whole call jitted) and PyTorch
2.13 `generate` (inference_mode) of the same GPT-2 network (random init, no stop token) on the
same prompts, and prints ours / the best peer (peers.py; needs the bench extra). --rounds
repeats that table to show the noise.
"""
from __future__ import annotations

import functools
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from research import generate
from research.benchmarks import peers
from research.models import presets
from research.models.config import ModelConfig
from research.models.decoder import Decoder

_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '8'], 'Batch sizes to time.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 32, 'Prompt tokens per row.')
_NEW_TOKENS = flags.DEFINE_integer('new_tokens', 128, 'Generated tokens per row.')
_CONTEXTS = flags.DEFINE_list('contexts', ['64', '256', '512', '960'],
                              'Context lengths of the per-token latency table (batch 1; '
                              'empty: no table).')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Timed runs per measurement; the best is kept.')
_SIZE = flags.DEFINE_string('size', 'gpt2-124m', 'A decoder size from research/models/presets.py.')


def best_time(fn, repeats: int) -> float:
  """Seconds of the fastest of `repeats` calls, after one untimed call that compiles."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def step_matrices(params, cfg: ModelConfig) -> list[tuple[jax.Array, bool]]:
  """(matrix, is_token_table) for every weight matrix a decoding step reads in full: each
  kernel as the 2-D [in, out] it multiplies by ([d_model, heads, head_dim] -> [d_model,
  heads x head_dim], [heads, head_dim, d_model] -> [heads x head_dim, d_model]; an untied LM
  head's [d_model, vocab]) and, if the head is tied, the [vocab, d_model] token table, which
  it reads transposed. Not the position table or an untied token table (one row per token),
  norms or biases."""
  matrices = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    names = [getattr(key, 'key', None) for key in path]
    layers = [leaf] if not cfg.scan_layers or 'layers' not in names else list(leaf)
    for w in layers:
      if names[-1] == 'kernel':
        split = 1 if w.shape[0] == cfg.d_model else w.ndim - 1
        matrices.append((w.reshape(math.prod(w.shape[:split]), -1), False))
      elif cfg.tie_output and names[-2:] == ['token', 'embedding']:
        matrices.append((w, True))
  return matrices


def _fan_in(w: jax.Array, table: bool) -> int:
  return w.shape[1] if table else w.shape[0]


@functools.partial(jax.jit, static_argnums=2)
def _chain(x, weights, tables):
  """x [batch, widest] @ every weight (x @ table^T for the token table), each product scaled
  by a scalar of the one before so XLA runs them one after another."""
  scale = jnp.ones((), x.dtype)
  for w, table in zip(weights, tables):
    y = (x[:, :_fan_in(w, table)] * scale) @ (w.T if table else w)  # [batch, out]
    scale = 1 + 0 * y[0, 0]  # XLA keeps 0 * y for floats (NaN), so the chain stays serial
  return scale


def floor_seconds(matrices: list[tuple[jax.Array, bool]], batch: int, repeats: int) -> float:
  """Seconds of one chained pass of [batch, in] products over `matrices` (best of repeats)."""
  weights, tables = zip(*matrices)
  x = jnp.ones((batch, max(map(_fan_in, weights, tables))), weights[0].dtype)
  return best_time(lambda: _chain(x, weights, tables), repeats)


def main(argv):
  del argv
  if peers.PEERS.value:
    peers.check_installed()
  cfg = ModelConfig(**{**presets.architecture(_SIZE.value), 'dropout': 0.0,
                       'attention_dropout': 0.0})
  model = Decoder(cfg)
  params = jax.jit(lambda: nn.meta.unbox(
      model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))['params']))()
  rng = np.random.default_rng(0)
  prompt_len, new_tokens = _PROMPT_LEN.value, _NEW_TOKENS.value
  decoding = generate.Decoding(max_new_tokens=new_tokens)

  @jax.jit
  def full_forward(ids):  # the no-cache cost of one token: the whole prefix again
    return model.apply({'params': params}, ids).logits[:, -1]

  def forward_latency(batch: int, length: int) -> float:
    ids = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, length)), jnp.int32)
    return best_time(lambda: full_forward(ids), _REPEATS.value)

  print(f'{_SIZE.value}: {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.1f}M params, '
        f'prompt {prompt_len}, {new_tokens} new tokens, greedy, {jax.devices()[0].platform}')
  others = {}
  if peers.PEERS.value:  # the same network in each framework; every call makes new_tokens tokens
    others = {'HF Flax': peers.flax_generate(cfg, new_tokens)[0],
              'PyTorch': peers.torch_generate(cfg, new_tokens)[0]}
  matrices = step_matrices(params, cfg)
  columns = (f'{"batch":>5} {"cache tok/s":>12} {"no-cache tok/s":>15} {"speed-up":>9}'
             f' {"floor":>8} {"ours/floor":>10}')
  columns += ''.join(f' {name:>8}' for name in others) + (f' {"ours/best":>9}' if others else '')
  for round_index in range(peers.ROUNDS.value):
    if peers.ROUNDS.value > 1:
      print(f'round {round_index + 1} of {peers.ROUNDS.value}')
    print(columns)
    for batch in map(int, _BATCH_SIZES.value):
      prompts = rng.integers(0, cfg.vocab_size, (batch, prompt_len))
      cached = best_time(lambda: generate.decode(model, params, prompts.tolist(), decoding).tokens,
                         _REPEATS.value)
      points = np.linspace(prompt_len, prompt_len + new_tokens, 3).astype(int)
      latencies = [forward_latency(batch, int(n)) for n in points]
      no_cache = np.interp(np.arange(prompt_len, prompt_len + new_tokens), points,
                           latencies).sum()
      line = (f'{batch:>5} {batch * new_tokens / cached:>12.1f} '
              f'{batch * new_tokens / no_cache:>15.1f} {no_cache / cached:>8.1f}x')
      floor = floor_seconds(matrices, batch, _REPEATS.value)  # per step of `batch` tokens
      line += f' {batch / floor:>8.1f} {new_tokens * floor / cached:>9.2f}x'
      if others:
        seconds = [best_time(functools.partial(run, prompts), _REPEATS.value)
                   for run in others.values()]
        line += ''.join(f' {batch * new_tokens / t:>8.1f}' for t in seconds)
        line += f' {min(seconds) / cached:>8.2f}x'
      print(line, flush=True)

  if not _CONTEXTS.value:
    return
  print('\nper-token latency at batch 1 (ms) as the context grows')
  print(f'{"context":>7} {"cache":>8} {"no cache":>9}')
  steps = 32
  for context in map(int, _CONTEXTS.value):
    # Inside the real loop (where XLA lays the cache out for the attention dots): the time of
    # `steps` more tokens after a prompt of `context` tokens, per token. Both runs share one
    # compiled loop, since max_new_tokens is a traced value.
    prompt = [rng.integers(0, cfg.vocab_size, context).tolist()]
    run = lambda new: generate.decode(model, params, prompt, generate.Decoding(
        max_new_tokens=new)).tokens
    with_cache = (best_time(lambda: run(steps + 1), _REPEATS.value)
                  - best_time(lambda: run(1), _REPEATS.value)) / steps
    print(f'{context:>7} {1e3 * with_cache:>8.1f} {1e3 * forward_latency(1, context):>9.1f}',
          flush=True)


if __name__ == '__main__':
  app.run(main)
