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

--peers times, in the same run, HF Flax 4.57 `generate` (the whole call jitted) and PyTorch
2.13 `generate` (inference_mode) of the same GPT-2 network (random init, no stop token) on the
same prompts, and prints ours / the best peer (peers.py; needs the bench extra). --rounds
repeats that table to show the noise.
"""
from __future__ import annotations

import functools
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
  columns = f'{"batch":>5} {"cache tok/s":>12} {"no-cache tok/s":>15} {"speed-up":>9}'
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
