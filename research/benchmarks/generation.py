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

References on this 2-core CPU (issue 4): HF Flax `generate` 9.9 tokens/s at batch 1 and 87 at
batch 8; PyTorch 2.13 `generate` 19.3 and 62.
"""
from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from research import generate
from research.models import presets
from research.models.config import ModelConfig
from research.models.decoder import Decoder

_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '8'], 'Batch sizes to time.')
_PROMPT_LEN = flags.DEFINE_integer('prompt_len', 32, 'Prompt tokens per row.')
_NEW_TOKENS = flags.DEFINE_integer('new_tokens', 128, 'Generated tokens per row.')
_CONTEXTS = flags.DEFINE_list('contexts', ['64', '256', '512', '960'],
                              'Context lengths of the per-token latency table (batch 1).')
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
  print(f'{"batch":>5} {"cache tok/s":>12} {"no-cache tok/s":>15} {"speed-up":>9}')
  for batch in map(int, _BATCH_SIZES.value):
    prompts = rng.integers(0, cfg.vocab_size, (batch, prompt_len)).tolist()
    cached = best_time(lambda: generate.decode(model, params, prompts, decoding).tokens,
                       _REPEATS.value)
    points = np.linspace(prompt_len, prompt_len + new_tokens, 3).astype(int)
    latencies = [forward_latency(batch, int(n)) for n in points]
    no_cache = np.interp(np.arange(prompt_len, prompt_len + new_tokens), points, latencies).sum()
    print(f'{batch:>5} {batch * new_tokens / cached:>12.1f} {batch * new_tokens / no_cache:>15.1f} '
          f'{no_cache / cached:>8.1f}x', flush=True)

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
