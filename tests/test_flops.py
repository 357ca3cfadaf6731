"""Tests for research.flops: FLOPs per token, peak FLOP/s, MFU."""

import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import pytest

from research import flops

_REPO = pathlib.Path(__file__).resolve().parents[1]
_GPT2_SMALL = dict(num_layers=12, d_model=768, d_ff=3072, num_heads=12,
                   seq_len=1024, vocab_size=50257)


def test_gpt2_small_flops_per_token():
  # Matmul weights: 12 layers x (4 d^2 attention + 2 d d_ff MLP) + d x V
  # output projection = 123.5M, of GPT-2 small's 124.4M parameters (the rest
  # are position embeddings, biases and LayerNorms).
  n_matmul = 12 * (4 * 768**2 + 2 * 768 * 3072) + 768 * 50257
  assert n_matmul == 123_532_032
  attention = 12 * 12 * 1024 * 768  # PaLM's 12 L T d: QK^T and AV, x3
  expected = 6 * n_matmul + attention
  assert flops.transformer_flops_per_token(**_GPT2_SMALL) == expected
  # Kaplan's rule of thumb, 6N with all 124.4M parameters, plus attention.
  assert expected == pytest.approx(6 * 124.44e6 + attention, rel=0.01)
  assert flops.transformer_flops_per_token(
      **_GPT2_SMALL, training=False) == expected / 3


def test_flops_per_token_options():
  base = dict(num_layers=2, d_model=512, d_ff=2048, num_heads=8, seq_len=128,
              vocab_size=1000)
  # T5 decouples the attention width (heads x head_dim) from d_model.
  wide = flops.transformer_flops_per_token(**base, head_dim=128, training=False)
  d_attn = 8 * 128
  assert wide == (2 * (2 * (4 * 512 * d_attn + 2 * 512 * 2048) + 512 * 1000)
                  + 2 * 2 * 2 * 128 * d_attn)
  # An explicit parameter count replaces the per-layer weights only.
  custom = flops.transformer_flops_per_token(
      **base, n_params_non_embedding=10**6, training=False)
  assert custom == 2 * (10**6 + 512 * 1000) + 2 * 2 * 2 * 128 * 512


def test_mfu():
  assert flops.mfu(1e12, step_time_s=0.5, peak_flops=1e12, num_devices=4) == 0.5


@pytest.mark.parametrize('device_kind, dtype, expected', [
    ('NVIDIA H100 80GB HBM3', jnp.bfloat16, 989e12),
    ('NVIDIA H100 PCIe', 'bfloat16', 756e12),
    ('NVIDIA H200', jnp.bfloat16, 989e12),
    ('NVIDIA A100-SXM4-80GB', jnp.bfloat16, 312e12),
    ('TPU v4', jnp.bfloat16, 275e12),
    ('TPU v5 lite', jnp.bfloat16, 197e12),
    ('TPU v5', jnp.bfloat16, 459e12),
    ('NVIDIA H100 80GB HBM3', jnp.float32, None),
    ('cpu', jnp.bfloat16, None),
])
def test_known_peak_flops(device_kind, dtype, expected):
  assert flops.known_peak_flops(device_kind, dtype) == expected


def test_measured_peak_is_cached(tmp_path, monkeypatch):
  monkeypatch.delenv(flops.REMEASURE_ENV, raising=False)
  runs = []
  chain = flops._matmul_chain
  monkeypatch.setattr(flops, '_matmul_chain',
                      lambda *args: runs.append(1) or chain(*args))
  cache = tmp_path / 'peak.json'
  measured = flops.measure_peak_matmul_flops(n=64, repeats=2, cache_file=cache)
  assert measured > 0 and runs
  (key,) = json.loads(cache.read_text())

  runs.clear()
  cache.write_text(json.dumps({key: 123.0}))
  assert flops.measure_peak_matmul_flops(n=64, cache_file=cache) == 123.0
  assert not runs
  # Re-measuring keeps the better value: a busy machine only measures lower.
  remeasured = flops.measure_peak_matmul_flops(
      n=64, repeats=2, cache_file=cache, force=True)
  assert runs and remeasured > 123.0
  assert json.loads(cache.read_text()) == {key: remeasured}
  runs.clear()
  cache.write_text(json.dumps({key: 1e30}))
  monkeypatch.setenv(flops.REMEASURE_ENV, '1')
  assert flops.measure_peak_matmul_flops(n=64, repeats=2, cache_file=cache) == 1e30
  assert runs
  # Other sizes and dtypes get their own entries.
  flops.measure_peak_matmul_flops('bfloat16', n=32, repeats=1, cache_file=cache)
  assert len(json.loads(cache.read_text())) == 2


def test_main_prints_measured_peaks(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'research.flops'], cwd=_REPO, check=True,
      capture_output=True, text=True,
      env={**os.environ, 'XDG_CACHE_HOME': str(tmp_path)}).stdout
  assert 'fp32: measured' in out and 'bf16: measured' in out, out
  assert (tmp_path / 'research' / 'peak_flops.json').exists()


def test_xlnet_query_stream_adds_a_pass_without_key_value_projections():
  from research.models.config import ModelConfig
  cfg = ModelConfig(vocab_size=1000, max_len=32, d_model=64, num_layers=2, num_heads=4,
                    d_ff=256)
  one = flops.model_flops(cfg, length=32, vocab_positions=5, training=False)
  two = flops.model_flops(cfg.replace(two_stream=True), length=32, vocab_positions=5,
                          training=False)
  # Per layer and token: q and o projections (2 x 2 d^2), the MLP (2 x 2 d d_ff) and
  # attention over 32 keys (2 x 2 x 32 x d).
  assert two - one == 2 * 32 * (2 * 2 * 64 * 64 + 2 * 2 * 64 * 256 + 2 * 2 * 32 * 64)
