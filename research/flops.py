"""FLOP accounting and model FLOPs utilisation (MFU).

MFU (PaLM, Chowdhery et al. 2022, Appendix B) is the model's matmul FLOPs per
second divided by the hardware's peak FLOP/s. Model FLOPs are those the
architecture needs, not those executed: recomputation under remat is not
counted (counting it gives "hardware FLOPs utilisation").

The peak is the vendor's dense number where we know the device; otherwise
(e.g. CPUs) it is measured with a large matmul and cached on disk.

    python -m research.flops   # prints the measured fp32 and bf16 peaks
"""

import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp

# Dense (no structured sparsity) bf16 peaks per device, from the vendors'
# datasheets: Cloud TPU system-architecture pages (v4, v5e, v5p, v6e) and
# NVIDIA's A100, H100 and H200 datasheets. Matched as substrings of the
# lower-cased `device.device_kind`, most specific first.
_BF16_PEAK_FLOPS = (
    ('tpu v6 lite', 918e12),  # v6e (Trillium)
    ('tpu v5 lite', 197e12),  # v5e
    ('tpu v5e', 197e12),
    ('tpu v5', 459e12),  # v5p
    ('tpu v4', 275e12),
    ('h200 nvl', 835e12),
    ('h200', 989e12),  # SXM
    ('h100 pcie', 756e12),
    ('h100 nvl', 835e12),
    ('h100', 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ('a100', 312e12),
)

# One timing lasts at least this long (or _MAX_CHAIN matmuls).
_MIN_TIMING_S = 0.05
_MAX_CHAIN = 1000

# Set to 1 to measure the peak again even if it is cached.
REMEASURE_ENV = 'RESEARCH_REMEASURE_PEAK'


def transformer_flops_per_token(
    *,
    num_layers: int,
    d_model: int,
    d_ff: int,
    num_heads: int,
    seq_len: int,
    vocab_size: int,
    head_dim: int | None = None,
    n_params_non_embedding: int | None = None,
    training: bool = True,
) -> float:
  """Matmul FLOPs per token of a transformer stack plus its output projection.

  Kaplan et al. (2020, Sec. 2.1, Table 1) give the forward cost as
  2N + 2·L·T·d_attn, where N is the non-embedding parameter count (each weight
  is one multiply-add, 2 FLOPs, per token) and the second term is the attention
  scores over a context of T tokens. Like PaLM (Appendix B), we count both
  attention matmuls, the scores QK^T and the weighted sum of the values, at
  2·T·d_attn FLOPs per token and layer each; training costs three forwards
  (the backward pass is two), giving 6N + 12·L·T·d_attn per token. The full
  T x T score matrix is counted even for causal attention, where half of it is
  masked: the kernels compute it, and the papers we compare with count it.

  Counted per layer: Q, K, V and output projections (4·d_model·d_attn
  weights), the two MLP matrices (2·d_model·d_ff), the two attention matmuls;
  once: the output vocabulary projection (d_model·vocab_size, whether or not it
  is tied to the input embedding). Not counted: embedding lookups, norms,
  biases, softmax, activations (lower order, and not matmuls).

  Args:
    num_layers: L.
    d_model: model width.
    d_ff: MLP hidden width.
    num_heads: attention heads.
    seq_len: T, the attended context length.
    vocab_size: rows of the output projection.
    head_dim: per-head width; default d_model // num_heads (T5 decouples it).
    n_params_non_embedding: if given, replaces the per-layer projection and
      MLP weight count (for architectures the formula does not describe, e.g.
      gated MLPs or cross-attention).
    training: forward + backward (3x) if True, else forward only.

  Returns:
    FLOPs per token.
  """
  d_attn = num_heads * (head_dim or d_model // num_heads)
  if n_params_non_embedding is None:
    n_params_non_embedding = num_layers * (
        4 * d_model * d_attn + 2 * d_model * d_ff
    )
  dense = 2 * (n_params_non_embedding + d_model * vocab_size)
  attention = num_layers * 2 * (2 * seq_len * d_attn)
  forward = dense + attention
  return float(3 * forward if training else forward)


def model_flops(cfg, *, length: int, target_length: int = 0,
                vocab_positions: int | None = None, training: bool = True) -> float:
  """Matmul FLOPs of one example through a `ModelConfig` of any arch, counted as
  `transformer_flops_per_token` counts them (2 per weight per token, PaLM's attention term,
  x3 for training).

  encoder / decoder: `length` tokens through `num_layers` layers. encoder_decoder: `length`
  source tokens through the encoder and `target_length` target tokens through the decoder,
  whose layers add cross-attention: query and output projections per target token, key and
  value projections per source token, and scores / weighted sums over the source. The output
  projection counts `vocab_positions` rows (default: every target or, for encoders and
  decoders, every token; BERT's MLM projects only its predicted positions). XLNet's query
  stream (`two_stream`) adds a second pass through every layer.
  """
  d, d_attn = cfg.d_model, cfg.num_heads * cfg.head_dim
  mlp = (3 if cfg.mlp == 'gated' else 2) * d * cfg.d_ff
  projections = 4 * d * d_attn
  attention = lambda queries, keys: 2 * 2 * queries * keys * d_attn  # QK^T and AV
  if cfg.arch == 'encoder_decoder':
    encoder = cfg.num_layers * (length * 2 * (projections + mlp) + attention(length, length))
    decoder = cfg.decoder_layers * (
        target_length * 2 * (projections + 2 * d * d_attn + mlp)  # self + cross q, o + MLP
        + length * 2 * (2 * d * d_attn)  # cross-attention keys and values of the source
        + attention(target_length, target_length) + attention(target_length, length))
    stacks, rows = encoder + decoder, target_length
  else:
    stacks = cfg.num_layers * (length * 2 * (projections + mlp) + attention(length, length))
    if cfg.two_stream:  # XLNet's query stream: its queries, outputs, MLP
      # and attention over the content stream's keys and values (which it needs not project
      # again; models/transformer.py does, so that work shows as a lower MFU).
      stacks += cfg.num_layers * (length * 2 * (2 * d * d_attn + mlp) + attention(length, length))
    rows = length
  vocab = 2 * d * cfg.vocab_size * (rows if vocab_positions is None else vocab_positions)
  forward = stacks + vocab
  return float(3 * forward if training else forward)


def example_lengths(batch: dict) -> tuple[int, int]:
  """(input length, decoder input length or 0) of a batch's examples (its objective's keys:
  an encoder-decoder's decoder reads `decoder_input_ids`)."""
  target = batch['decoder_input_ids'].shape[-1] if 'decoder_input_ids' in batch else 0
  return batch['input_ids'].shape[-1], target


def mfu(
    flops_per_step: float,
    step_time_s: float,
    peak_flops: float,
    num_devices: int = 1,
) -> float:
  """Model FLOPs utilisation: achieved model FLOP/s over the devices' peak.

  Args:
    flops_per_step: model FLOPs of one step over the global batch.
    step_time_s: seconds per step.
    peak_flops: peak FLOP/s of one device.
    num_devices: devices the step runs on.
  """
  return flops_per_step / step_time_s / (peak_flops * num_devices)


def known_peak_flops(device_kind: str, dtype=jnp.bfloat16) -> float | None:
  """The datasheet dense peak FLOP/s of one device, or None if unknown.

  Only bf16 is tabulated: it is what we train in on accelerators; for fp32
  the effective peak depends on XLA's matmul precision (TF32, bf16 passes),
  so it is measured instead.
  """
  if jnp.dtype(dtype) != jnp.bfloat16:
    return None
  kind = device_kind.lower()
  for pattern, flops in _BF16_PEAK_FLOPS:
    if pattern in kind:
      return flops
  return None


def measure_peak_matmul_flops(
    dtype=jnp.float32,
    n: int = 2048,
    repeats: int = 10,
    *,
    force: bool = False,
    cache_file: str | os.PathLike[str] | None = None,
) -> float:
  """Best FLOP/s of jitted n x n matmuls on the default device.

  The result is cached per (backend, device kind, dtype, n) in `cache_file`
  (default `$XDG_CACHE_HOME/research/peak_flops.json`, i.e.
  `~/.cache/research/peak_flops.json`) so runs don't re-measure; `force=True`
  or the environment variable RESEARCH_REMEASURE_PEAK=1 measures again and
  keeps the better of the old and new values. Measure on an otherwise idle
  machine: a busy one gives a low peak and so an inflated MFU.

  Args:
    dtype: operand dtype.
    n: matrix size; large enough to be compute bound (2048 is on CPUs).
    repeats: timed runs after warm-up (compilation); the best counts.
    force: ignore the cache.
    cache_file: JSON file of cached measurements.

  Returns:
    FLOP/s, counting 2·n^3 FLOPs per matmul.
  """
  device = jax.devices()[0]
  key = f'{jax.default_backend()}/{device.device_kind}/{jnp.dtype(dtype).name}/{n}'
  path = pathlib.Path(cache_file or _default_cache_file())
  cache = json.loads(path.read_text()) if path.exists() else {}
  if key in cache and not (force or os.environ.get(REMEASURE_ENV) == '1'):
    return cache[key]

  a_key, x_key = jax.random.split(jax.random.key(0))
  # Scaled so that repeated products keep entries of order one.
  a = (jax.random.normal(a_key, (n, n)) / n**0.5).astype(dtype)
  x = jax.random.normal(x_key, (n, n), dtype)

  def time_chain(length: int) -> float:
    start = time.perf_counter()
    _matmul_chain(a, x, length).block_until_ready()
    return (time.perf_counter() - start) / length

  time_chain(1)  # compile
  one = time_chain(1)
  # Enough products per timing to hide dispatch latency on fast devices.
  length = int(min(max(_MIN_TIMING_S / one, 1), _MAX_CHAIN))
  best = min(time_chain(length) for _ in range(repeats))
  # Contention (other jobs on the machine) only ever lowers a measurement,
  # so a re-measurement keeps the better of the two.
  flops = max(2 * n**3 / best, cache.get(key, 0.0))

  cache[key] = flops
  path.parent.mkdir(parents=True, exist_ok=True)
  # Write-then-rename so concurrent runs never read a half-written file.
  tmp = path.with_suffix(f'.{os.getpid()}.tmp')
  tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
  tmp.replace(path)
  return flops


@jax.jit
def _matmul_chain(a: jax.Array, x: jax.Array, length: int) -> jax.Array:
  """a^length @ x: each product feeds the next, so XLA cannot hoist or
  merge them, and a single dispatch covers `length` matmuls."""
  return jax.lax.fori_loop(0, length, lambda _, y: a @ y, x)


def peak_flops(dtype=jnp.bfloat16) -> float:
  """Peak FLOP/s of one default device: the datasheet's, else measured."""
  kind = jax.devices()[0].device_kind
  return known_peak_flops(kind, dtype) or measure_peak_matmul_flops(dtype)


def _default_cache_file() -> pathlib.Path:
  cache_home = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(cache_home) / 'research' / 'peak_flops.json'


if __name__ == '__main__':
  device_kind = jax.devices()[0].device_kind
  for name, dt in (('fp32', jnp.float32), ('bf16', jnp.bfloat16)):
    measured = measure_peak_matmul_flops(dt)
    known = known_peak_flops(device_kind, dt)
    datasheet = f', datasheet {known / 1e12:.0f} TFLOP/s' if known else ''
    print(
        f'{device_kind} {name}: measured {measured / 1e9:.1f} GFLOP/s'
        f'{datasheet}'
    )
