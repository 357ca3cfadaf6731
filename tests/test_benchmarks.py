"""Tests for research/benchmarks: shapes, synthetic batches, the peers' networks, venv pins, and
the GPU benchmark script end to end (tiny shapes on whatever device is here)."""
from __future__ import annotations

import functools
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from research import models
from research.benchmarks import generation, peers, train_throughput
from research.models import presets
from research.models.config import ModelConfig
from research.objectives import synthetic

REPO = pathlib.Path(__file__).resolve().parent.parent
# Pins transformers 4.57.6 cannot share with constraints.txt (see constraints-bench.txt).
_BENCH_OVERRIDES = {'tokenizers', 'huggingface-hub'}


def _pins(path: pathlib.Path) -> dict[str, str]:
  pins = {}
  for line in path.read_text().splitlines():
    if '==' in line and not line.startswith('#'):
      name, version = line.strip().split('==')
      pins[name.lower().replace('_', '-')] = version
  return pins


def test_bench_constraints_pin_what_the_project_pins():
  """The bench venv runs our code on the versions the README figures come from."""
  ours, bench = _pins(REPO / 'constraints.txt'), _pins(REPO / 'constraints-bench.txt')
  differ = {name: (ours[name], bench[name]) for name in ours.keys() & bench.keys()
            if ours[name] != bench[name] and name not in _BENCH_OVERRIDES}
  assert not differ
  assert bench['transformers'] == '4.57.6' and bench['torch'] == '2.13.0+cpu'
  # Every runtime package of ours is pinned there too.
  assert {'jax', 'jaxlib', 'flax', 'optax', 'numpy'} <= bench.keys()


def test_base_shape_is_the_published_base_sizes_at_batch_4():
  shape = train_throughput.SHAPES['base']
  assert (shape.batch, shape.seq_len) == (4, 128)
  bert = train_throughput.model_config(shape, 'bert', 'float32')
  gpt = train_throughput.model_config(shape, 'gpt', 'float32')
  assert (bert.num_layers, bert.d_model, bert.num_heads, bert.vocab_size) == (12, 768, 12, 30522)
  assert (gpt.num_layers, gpt.d_model, gpt.vocab_size, gpt.pre_ln) == (12, 768, 50257, True)
  for family in train_throughput.OBJECTIVES:
    cfg = train_throughput.model_config(shape, family, 'float32')
    assert (cfg.dropout, cfg.attention_dropout) == (0.1, 0.1)  # as the peers'


@pytest.mark.parametrize('family, target_len', [('t5', 29), ('bart', 128)])
def test_synthetic_seq2seq_batches_have_the_objectives_target_lengths(family, target_len):
  batch = synthetic.synthetic_batch(train_throughput.OBJECTIVES[family], 2, 128, 1000,
                                           np.random.default_rng(0))
  assert batch['input_ids'].shape == (2, 128)
  assert batch['decoder_input_ids'].shape == batch['targets'].shape == (2, target_len)


@pytest.mark.parametrize('family', list(train_throughput.OBJECTIVES))
def test_synthetic_batches_hold_what_each_objective_reads(family):
  """Each benchmarked objective scores its synthetic batch (shapes only: jax.eval_shape)."""
  objective = train_throughput.OBJECTIVES[family]
  cfg = train_throughput.model_config(train_throughput.SHAPES['tiny'], family, 'float32')
  model = models.build(cfg)
  batch = synthetic.synthetic_batch(objective, 2, 128, cfg.vocab_size, np.random.default_rng(0))
  params = jax.eval_shape(lambda: nn.meta.unbox(models.init_params(model, jax.random.key(0))))
  terms = jax.eval_shape(lambda p: objective.terms(model, p, batch, jax.random.key(1)), params)
  assert all(t.shape == (2,) for t in terms.values())


def test_peers_without_transformers_is_one_error_line():
  try:
    import transformers  # pylint: disable=unused-import
    pytest.skip('transformers is installed here')
  except ImportError:
    pass
  run = subprocess.run([sys.executable, '-m', 'research.benchmarks.train_throughput', '--peers'],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode != 0
  assert run.stderr.strip().splitlines()[-1].startswith('error: --peers needs transformers')


@pytest.mark.parametrize('shape', ['tiny', 'base'])
@pytest.mark.parametrize('family', ['bert', 'gpt', 't5', 'bart'])
def test_peer_networks_have_our_parameter_count(family, shape):
  """hf_config builds the same network: the same parameter count, but for HF BART's
  final_logits_bias (one per vocabulary entry) and two unused position rows per stack."""
  pytest.importorskip('transformers')
  cfg = train_throughput.model_config(train_throughput.SHAPES[shape], family, 'float32')
  ours = sum(x.size for x in jax.tree.leaves(models.abstract_params(cfg)))
  model = peers.flax_model_class(family)(peers.hf_config(family, cfg), _do_init=False)
  theirs = sum(x.size for x in jax.tree.leaves(
      jax.eval_shape(functools.partial(model.init_weights, input_shape=(1, 128)),
                     jax.random.PRNGKey(0))))
  extra = cfg.vocab_size + 2 * 2 * cfg.d_model if family == 'bart' else 0
  assert theirs == ours + extra


@pytest.mark.slow
def test_gpu_benchmark_smoke():
  result = subprocess.run([sys.executable, '-m', 'research.benchmarks.gpu', '--smoke',
                           '--nohf'], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  train = [l for l in lines if l.startswith(('gpt-tiny', 'bert-tiny'))]
  assert len(train) == 2 and all(l.endswith('%') for l in train), result.stdout
  decode = [l.split() for l in lines[lines.index(next(l for l in lines if l.startswith('decoding'))) + 2:]]
  assert [row[0] for row in decode] == ['1', '2'] and all(float(row[1]) > 0 for row in decode)


def test_synthetic_permutation_lm_batch_predicts_the_last_sixth_of_each_order():
  objective = train_throughput.OBJECTIVES['xlnet']
  batch = synthetic.synthetic_batch(objective, 3, 128, 1000, np.random.default_rng(0))
  for order, weights in zip(batch['order'], batch['mlm_weights']):
    assert sorted(order) == list(range(128))
    assert weights.sum() == 128 // 6 and (order[weights == 1] >= 128 - 128 // 6).all()
  assert train_throughput.model_config(train_throughput.SHAPES['tiny'], 'xlnet',
                                       'float32').two_stream


def test_unknown_model_family_is_a_one_line_error():
  run = subprocess.run([sys.executable, '-m', 'research.benchmarks.train_throughput',
                        '--models=gpt,foo', '--shapes=tiny'], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert run.returncode != 0
  assert 'unknown foo; use bert, gpt, t5, bart, xlnet' in run.stderr
  assert 'Traceback' not in run.stderr


@pytest.mark.parametrize('scan_layers', [False, True])
def test_decoding_floor_reads_every_weight_matrix_once(scan_layers):
  # heads x head_dim (2 x 48) differs from d_model (128): the kernels' 2-D shapes tell in from out
  cfg = ModelConfig(**{**presets.architecture('gpt-tiny'), 'vocab_size': 1000, 'd_head': 48,
                       'scan_layers': scan_layers})
  params = nn.meta.unbox(models.init_params(models.build(cfg), jax.random.key(0)))
  matrices = generation.step_matrices(params, cfg)
  # 4 attention projections + 2 MLP kernels per layer, and the token table the head reads
  assert len(matrices) == 6 * cfg.num_layers + 1
  assert [table for _, table in matrices].count(True) == 1
  assert all(w.ndim == 2 for w, _ in matrices)
  d, inner = cfg.d_model, cfg.num_heads * cfg.head_dim
  assert sum(w.size for w, _ in matrices) == (
      cfg.num_layers * (4 * d * inner + 2 * d * cfg.d_ff) + cfg.vocab_size * d)
  assert sorted({w.shape for w, table in matrices if not table}) == sorted(
      {(d, inner), (inner, d), (d, cfg.d_ff), (cfg.d_ff, d)})
  assert generation.floor_seconds(matrices, batch=2, repeats=1) > 0
