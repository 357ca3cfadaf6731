"""Scanned layers (nn.scan over one Block) compute what the Python loop computes, for every
family, with the same weights converted between layouts (models/scan_layout.py)."""
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from research import checkpointing, convert, generate, loading, models
from research.convert import bert, gpt2
from research.models import presets, scan_layout
from research.models.config import ModelConfig

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [20]]


def tiny(size: str, **kw) -> ModelConfig:
  return ModelConfig(**{**presets.architecture(size), 'vocab_size': 97, 'max_len': 32,
                        'd_model': 32, 'num_layers': 2, 'num_heads': 4, 'd_ff': 64,
                        'dropout': 0.0, 'attention_dropout': 0.0, **kw})


def unscanned_params(cfg: ModelConfig):
  params = nn.meta.unbox(models.init_params(models.build(cfg), jax.random.key(0)))
  return jax.tree.map(lambda x: x * 4, params)  # spread the logits: no near-ties in greedy


@functools.partial(jax.jit, static_argnums=0)
def apply(cfg: ModelConfig, params, ids):
  model = models.build(cfg)
  if cfg.arch == 'encoder_decoder':
    return model.apply({'params': params}, ids, ids[:, :6], return_intermediates=True)
  return model.apply({'params': params}, ids, return_intermediates=True)


@functools.partial(jax.jit, static_argnums=0)
def grad_of_outputs(cfg: ModelConfig, params, ids):
  """Gradient of a scalar function of the logits (through every layer)."""
  model = models.build(cfg)
  logits = lambda p: (model.apply({'params': p}, ids, ids[:, :6]) if cfg.arch == 'encoder_decoder'
                      else model.apply({'params': p}, ids))
  first = lambda out: out['mlm_logits'] if isinstance(out, dict) else out.logits
  loss = lambda p: jnp.mean(jnp.tanh(first(logits(p))))
  return jax.grad(loss)(params)


def float_leaves(tree):
  return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]


CASES = [('bert-tiny', {}, 'none'), ('gpt-tiny', {'local_window': 2}, 'none'),
         ('gpt-tiny', {'local_window': 2}, 'full'), ('t5-tiny', {}, 'dots_saveable'),
         pytest.param('bart-tiny', {}, 'dots_with_no_batch_dims_saveable',
                      marks=pytest.mark.slow)]


@pytest.mark.parametrize('size,extra,remat', CASES)
def test_scanned_equals_unscanned_outputs_and_gradients(size, extra, remat):
  """Logits, every layer's hidden states and attention weights (return_intermediates), and
  the gradient of a loss of the logits, under each remat policy; GPT-3's alternating local
  band (odd layers) and T5's per-stack relative bias included."""
  cfg = tiny(size, **extra)
  scfg = cfg.replace(scan_layers=True, remat_policy=remat)
  params = unscanned_params(cfg)
  sparams = scan_layout.scan(params)
  # The scanned model initialises exactly this layout (shapes, tree structure).
  boxed = jax.eval_shape(lambda: models.init_params(models.build(scfg), jax.random.key(0)))
  assert jax.tree.map(jnp.shape, nn.meta.unbox(boxed)) == jax.tree.map(jnp.shape, sparams)

  ids = jnp.asarray(np.random.default_rng(0).integers(3, 97, (2, 10)), jnp.int32)
  out, sout = apply(cfg, params, ids), apply(scfg, sparams, ids)
  assert jax.tree.structure(out) == jax.tree.structure(sout)
  for a, b in zip(float_leaves(out), float_leaves(sout)):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=2e-5)

  grads = scan_layout.scan(grad_of_outputs(cfg, params, ids))
  sgrads = grad_of_outputs(scfg, sparams, ids)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), grads,
               sgrads)


def sequence_logits(model, params, prompt, new):
  ids = jnp.asarray([prompt + new])
  return model.apply({'params': params}, ids).logits[0, len(prompt) - 1:len(prompt) - 1 + len(new)]


@pytest.mark.parametrize('num_beams', [1, 3])
def test_scanned_decoder_cached_decoding_equals_full_forward(num_beams):
  """generate.decode through a scanned GPT-3-style stack (stacked KV cache, local band):
  every step's logits equal the unscanned model's full forward; beam search (which reorders
  the stacked cache's rows) returns the unscanned model's beams."""
  cfg = tiny('gpt-tiny', local_window=2)
  scfg = cfg.replace(scan_layers=True)
  params = unscanned_params(cfg)
  sparams = scan_layout.scan(params)
  model, smodel = models.build(cfg), models.build(scfg)
  decoding = generate.Decoding(max_new_tokens=8, num_beams=num_beams)
  out = generate.decode(smodel, sparams, PROMPTS, decoding, return_logits=num_beams == 1)
  if num_beams > 1:
    ref = generate.decode(model, params, PROMPTS, decoding)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    return
  cache = smodel.apply({'params': sparams}, 2, 8, method='init_cache')
  assert cache['layers']['self']['k'].shape == (2, 2, 4, 8, 8)  # [layers, batch, heads, slots, d]
  for row, prompt in enumerate(PROMPTS):
    new = out.tokens[row, :8].tolist()
    np.testing.assert_allclose(out.logits[row], sequence_logits(model, params, prompt, new),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('size', ['t5-tiny', 'bart-tiny'])
def test_scanned_encoder_decoder_cached_decoding_equals_teacher_forcing(size):
  """Cross-attention keys/values cached once per layer at prefill, stacked on the layers axis."""
  cfg = tiny(size)
  scfg = cfg.replace(scan_layers=True)
  params = unscanned_params(cfg)
  model, smodel = models.build(cfg), models.build(scfg)
  out = generate.decode(smodel, scan_layout.scan(params), PROMPTS,
                        generate.Decoding(max_new_tokens=6), start_id=0, return_logits=True)
  for row, source in enumerate(PROMPTS):
    new = out.tokens[row, :6].tolist()
    full = model.apply({'params': params}, jnp.asarray([source]),
                       jnp.asarray([[0] + new[:-1]])).logits[0]
    np.testing.assert_allclose(out.logits[row], full, atol=1e-4, rtol=1e-4)


def test_layout_round_trip_and_errors():
  params = unscanned_params(tiny('t5-tiny'))
  scanned = scan_layout.scan(params)
  assert scan_layout.is_scanned(scanned) and not scan_layout.is_scanned(params)
  assert sorted(scanned['encoder']) == ['final_ln', 'layers', 'relative_bias']
  assert scanned['decoder']['layers']['mlp']['wi']['kernel'].shape == (2, 32, 64)
  jax.tree.map(np.testing.assert_array_equal, scan_layout.unscan(scanned), params)
  assert scan_layout.to_layout(params, False) is params
  jax.tree.map(np.testing.assert_array_equal, scan_layout.to_layout(params, True), scanned)
  gap = {'stack': {'layer_0': {'w': np.zeros(2)}, 'layer_2': {'w': np.zeros(2)}}}
  with pytest.raises(ValueError, match='not numbered'):
    scan_layout.scan(gap)


def test_unknown_remat_policy_is_an_error():
  with pytest.raises(ValueError, match='remat_policy'):
    tiny('gpt-tiny', remat_policy='some')
  assert tiny('gpt-tiny', remat=True).remat_mode == 'full'
  assert tiny('gpt-tiny', remat=True, remat_policy='dots_saveable').remat_mode == 'dots_saveable'


FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')


@pytest.mark.parametrize('name', ['hf_gpt2_tiny', 'hf_bert_tiny'])
def test_hf_import_and_export_in_the_scanned_layout(name, tmp_path):
  """An HF directory loads straight into the scanned layout, runs as transformers does, and
  exports back to transformers' tensors bit for bit."""
  directory = os.path.join(FIXTURES, name)
  loaded = loading.load_params(directory, scan_layers=True)
  assert loaded.cfg.scan_layers and scan_layout.is_scanned(loaded.params)
  ref = np.load(os.path.join(directory, 'reference.npz'))
  model = models.build(loaded.cfg)
  if loaded.cfg.arch == 'decoder':
    out = model.apply({'params': loaded.params}, ref['input_ids'], return_intermediates=True)
    hidden = out.hidden_states
  else:
    out = model.apply({'params': loaded.params}, ref['input_ids'], ref['segment_ids'],
                      ref['attention_mask'], return_intermediates=True)
    hidden = out['encoder'].hidden_states
  np.testing.assert_allclose(jnp.stack(hidden), ref['hidden_states'], atol=1e-4)
  module = gpt2 if loaded.cfg.arch == 'decoder' else bert
  module.save(str(tmp_path), loaded.cfg, loaded.params, loaded.tokenizer)
  original, exported = (load_file(os.path.join(d, 'model.safetensors'))
                        for d in (directory, tmp_path))
  assert sorted(original) == sorted(exported)
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_scanned_checkpoint_loads_in_either_layout(tmp_path):
  """load_params of a workdir trained with scan_layers=True: scanned as saved, or unscanned
  on request (what a model built without scan_layers needs)."""
  imported = convert.load(os.path.join(FIXTURES, 'hf_gpt2_tiny'))
  cfg = imported.cfg.replace(scan_layers=True)
  loading.write_model_config(str(tmp_path), cfg)
  imported.tokenizer.save(str(tmp_path / loading.HF_TOKENIZER_DIR))
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'checkpoints'), keep=1)
  ckpt.save(5, {'params': scan_layout.scan(imported.params)}, {})
  ckpt.close()
  as_saved = loading.load_params(str(tmp_path))
  assert as_saved.cfg == cfg and as_saved.step == 5
  assert as_saved.params['stack']['layers']['mlp']['wi']['kernel'].shape[0] == cfg.num_layers
  unscanned = loading.load_params(str(tmp_path), scan_layers=False)
  assert not unscanned.cfg.scan_layers
  jax.tree.map(np.testing.assert_array_equal, unscanned.params, imported.params)


def test_scanned_xlnet_two_streams_equal_the_loop():
  """XLNet's query stream rides through the scan beside the content stream (same weights)."""
  cfg = tiny('bert-tiny', two_stream=True)
  scfg = cfg.replace(scan_layers=True, remat_policy='full')
  params = unscanned_params(cfg)
  ids = jnp.asarray(np.random.default_rng(1).integers(3, 97, (2, 8)), jnp.int32)
  order = jnp.asarray(np.stack([np.random.default_rng(s).permutation(8) for s in (2, 3)]))
  run = lambda c, p: models.build(c).apply({'params': p}, ids, mask_kind='causal', order=order,
                                           query_stream=True)['encoder']
  out, sout = run(cfg, params), run(scfg, scan_layout.scan(params))
  np.testing.assert_allclose(out.hidden, sout.hidden, atol=2e-5, rtol=2e-5)
  np.testing.assert_allclose(out.query, sout.query, atol=2e-5, rtol=2e-5)


def test_scanned_unilm_cached_decoding_equals_the_loop():
  """UniLM-style decoding from a bidirectional encoder's cache, in the scanned layout."""
  cfg = tiny('bert-tiny', type_vocab_size=6)
  scfg = cfg.replace(scan_layers=True)
  params = unscanned_params(cfg)
  decode = lambda c, p: generate.decode(models.build(c), p, PROMPTS,
                                        generate.Decoding(max_new_tokens=4), start_id=6,
                                        return_logits=True)
  out, sout = decode(cfg, params), decode(scfg, scan_layout.scan(params))
  np.testing.assert_array_equal(out.tokens, sout.tokens)
  np.testing.assert_allclose(out.logits, sout.logits, atol=2e-5, rtol=2e-5)
