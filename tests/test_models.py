"""Model semantics: masks, KV cache, intermediates, published parameter counts, for every arch."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import models
from research.models import masks, presets
from research.models.config import ModelConfig
from research.models.decoder import Decoder
from research.models.encoder import Encoder, EncoderLM
from research.models.encoder_decoder import EncoderDecoder

TINY = dict(vocab_size=97, max_len=32, d_model=32, num_layers=2, num_heads=4, d_ff=64,
            dropout=0.0, attention_dropout=0.0)


def encoder_cfg(**kw):
  return ModelConfig(**{**presets.FAMILIES['bert'], **TINY, **kw})


def decoder_cfg(family='gpt2', **kw):
  return ModelConfig(**{**presets.FAMILIES[family], **TINY, **kw})


def seq2seq_cfg(family='t5', **kw):
  return ModelConfig(**{**presets.FAMILIES[family], **TINY, **kw})


def init(model, *args):
  return nn.meta.unbox(model.init(jax.random.key(0), *args)['params'])


def test_encoder_output_depends_on_future_tokens():
  model = Encoder(encoder_cfg())
  ids = jnp.array([[5, 6, 7, 8, 9, 10]])
  params = init(model, ids)
  changed = ids.at[0, 4].set(11)
  a = model.apply({'params': params}, ids).hidden
  b = model.apply({'params': params}, changed).hidden
  diff = np.abs(np.asarray(a - b)).max(-1)[0]  # per position
  assert (diff > 1e-6).all(), diff  # every position, before and after j=4, sees the change


@pytest.mark.parametrize('family', ['gpt1', 'gpt2'])
def test_decoder_output_never_depends_on_future_tokens(family):
  model = Decoder(decoder_cfg(family))
  ids = jnp.array([[5, 6, 7, 8, 9, 10]])
  params = init(model, ids)
  for j in range(ids.shape[1]):
    changed = ids.at[0, j].set(11)
    diff = np.abs(np.asarray(model.apply({'params': params}, ids).logits
                             - model.apply({'params': params}, changed).logits)).max(-1)[0]
    assert (diff[:j] == 0).all(), (j, diff)
    assert (diff[j:] > 1e-6).all(), (j, diff)


def test_encoder_ignores_padding():
  model = Encoder(encoder_cfg())
  ids = jnp.array([[5, 6, 7, 0, 0]])
  mask = jnp.array([[1, 1, 1, 0, 0]])
  params = init(model, ids)
  a = model.apply({'params': params}, ids, None, mask).hidden
  b = model.apply({'params': params}, ids.at[0, 4].set(50), None, mask).hidden
  np.testing.assert_array_equal(a[:, :3], b[:, :3])


def test_local_window_limits_receptive_field():
  """GPT-3 alternating pattern: layer 0 is dense (sees every earlier position), layer 1 is
  locally banded (w=2: a query sees itself and the one position before it)."""
  cfg = decoder_cfg(num_layers=2, local_window=2)
  model = Decoder(cfg)
  ids = jnp.arange(1, 9)[None]
  params = init(model, ids)
  out = model.apply({'params': params}, ids, return_intermediates=True)
  local_weights = out.attentions[1][0]  # layer 1 is local: [heads, q, k]
  dense_weights = out.attentions[0][0]
  q, k = np.meshgrid(np.arange(8), np.arange(8), indexing='ij')
  assert (np.asarray(local_weights)[:, (q - k) >= 2] == 0).all()
  assert (np.asarray(local_weights)[:, (q - k >= 0) & (q - k < 2)] > 0).all()
  assert (np.asarray(dense_weights)[:, q >= k] > 0).all()


def test_intermediates_chain_layers():
  cfg = encoder_cfg()
  model = Encoder(cfg)
  ids = jnp.array([[5, 6, 7, 8]])
  params = init(model, ids)
  out = model.apply({'params': params}, ids, return_intermediates=True)
  assert len(out.hidden_states) == cfg.num_layers + 1
  assert len(out.attentions) == cfg.num_layers
  assert out.attentions[0].shape == (1, cfg.num_heads, 4, 4)
  np.testing.assert_allclose(out.attentions[0].sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(out.hidden_states[-1], out.hidden)
  # Layer 1's input is layer 0's output: rerunning layer 1 alone on hidden_states[1] gives [2].
  from research.models.transformer import Block
  mask = masks.attention_mask(jnp.arange(4)[None], jnp.arange(4)[None], jnp.ones((1, 4)))
  again, _, _ = Block(cfg, num_layers=cfg.num_layers).apply(
      {'params': params['stack']['layer_1']}, out.hidden_states[1], {'mask': mask}, True)
  np.testing.assert_allclose(again, out.hidden_states[2], atol=1e-5)


@pytest.mark.parametrize('local_window', [0, 3])
def test_kv_cache_decoding_equals_full_forward(local_window):
  cfg = decoder_cfg(local_window=local_window)
  model = Decoder(cfg)
  ids = jax.random.randint(jax.random.key(1), (2, 10), 1, cfg.vocab_size)
  params = init(model, ids)
  full = model.apply({'params': params}, ids).logits
  # Prefill 4 tokens, then decode the remaining 6 one at a time.
  cache = model.init_cache(2, 10)
  out = model.apply({'params': params}, ids[:, :4], cache=cache, cache_index=0)
  steps = [out.logits]
  cache = out.cache
  for t in range(4, 10):
    out = model.apply({'params': params}, ids[:, t:t + 1], cache=cache, cache_index=t)
    cache = out.cache
    steps.append(out.logits)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), full, atol=1e-5)


def test_left_padded_prompt_with_positions_equals_unpadded():
  cfg = decoder_cfg()
  model = Decoder(cfg)
  ids = jnp.array([[7, 8, 9]])
  params = init(model, ids)
  ref = model.apply({'params': params}, ids).logits[0, -1]
  padded = jnp.array([[0, 0, 7, 8, 9]])
  mask = jnp.array([[0, 0, 1, 1, 1]])
  positions = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)
  out = model.apply({'params': params}, padded, mask, positions).logits[0, -1]
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_sequence_longer_than_positions_is_a_clear_error():
  model = Decoder(decoder_cfg())
  with pytest.raises(ValueError, match='exceeds the model'):
    init(model, jnp.zeros((1, 33), jnp.int32))


def test_mlm_head_is_tied_to_token_embeddings():
  model = EncoderLM(encoder_cfg())
  ids = jnp.array([[5, 6, 7]])
  params = init(model, ids)
  names = jax.tree_util.tree_flatten_with_path(params)[0]
  vocab_sized = [jax.tree_util.keystr(p) for p, x in names if x.shape[-1:] == (97,) or x.shape[:1] == (97,)]
  assert sorted(vocab_sized) == ["['encoder']['embeddings']['token']['embedding']",
                                 "['mlm_head']['bias']"]


@pytest.mark.parametrize('family', ['t5', 't5.1.1', 'bart'])
def test_encoder_decoder_masks(family):
  """The decoder never sees later target tokens; every target position sees every source
  token; source padding changes nothing."""
  cfg = seq2seq_cfg(family)
  model = EncoderDecoder(cfg)
  source = jnp.array([[5, 6, 7, 8, 9, 0, 0]])
  source_mask = jnp.array([[1, 1, 1, 1, 1, 0, 0]])
  target = jnp.array([[3, 11, 12, 13, 14]])
  params = init(model, source, target)
  logits = lambda src, tgt: np.asarray(model.apply({'params': params}, src, tgt, source_mask).logits)
  ref = logits(source, target)
  for j in range(target.shape[1]):
    diff = np.abs(ref - logits(source, target.at[0, j].set(20))).max(-1)[0]
    assert (diff[:j] == 0).all() and (diff[j:] > 1e-6).all(), (j, diff)
  for i in range(5):
    diff = np.abs(ref - logits(source.at[0, i].set(20), target)).max(-1)[0]
    assert (diff > 1e-6).all(), (i, diff)
  np.testing.assert_array_equal(ref, logits(source.at[0, 6].set(40), target))


@pytest.mark.parametrize('family', ['t5', 'bart'])
def test_encoder_decoder_cached_decoding_equals_full_forward(family):
  """prefill (encode once, cache cross-attention keys/values) + decode_step == teacher forcing."""
  cfg = seq2seq_cfg(family)
  model = EncoderDecoder(cfg)
  source = jax.random.randint(jax.random.key(1), (2, 9), 1, cfg.vocab_size)
  source_mask = jnp.array([[1] * 9, [1] * 6 + [0] * 3])
  target = jax.random.randint(jax.random.key(2), (2, 7), 1, cfg.vocab_size)
  params = init(model, source, target)
  full = model.apply({'params': params}, source, target, source_mask).logits
  logits, cache, lengths = model.apply({'params': params}, source, source_mask, target[:, 0],
                                       cache_len=8, method='prefill')
  steps = [logits]
  for t in range(1, 7):
    logits, cache = model.apply({'params': params}, target[:, t], lengths + t - 1, cache, t,
                                method='decode_step')
    steps.append(logits)
  np.testing.assert_allclose(jnp.stack(steps, 1), full, atol=1e-5)


def test_t5_relative_bias_is_one_table_per_stack():
  cfg = seq2seq_cfg('t5')
  params = init(EncoderDecoder(cfg), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 3), jnp.int32))
  tables = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]
            if 'relative_bias' in jax.tree_util.keystr(p)]
  assert sorted(tables) == ["['decoder']['relative_bias']['embedding']",
                            "['encoder']['relative_bias']['embedding']"]
  assert 'position' not in str(params)  # no absolute positions anywhere


def test_unknown_model_field_and_choice_are_errors():
  with pytest.raises(ValueError, match='unknown model field.*num_layrs'):
    ModelConfig.from_config({'size': 'bert-tiny', 'num_layrs': 3}, vocab_size=10)
  with pytest.raises(ValueError, match="model.norm='batch'"):
    ModelConfig(**{**TINY, 'norm': 'batch'})
  with pytest.raises(ValueError, match=r'model.attention_dropout=1.5 is not a probability'):
    ModelConfig(**{**TINY, 'attention_dropout': 1.5})
  cfg = ModelConfig.from_config({'size': 't5-small', 'num_layers': 3}, vocab_size=10)
  assert (cfg.num_layers, cfg.d_model, cfg.arch, cfg.norm) == (3, 512, 'encoder_decoder', 'rms')


def count_params(name: str) -> int:
  return models.param_count(ModelConfig(**presets.architecture(name)))


@pytest.mark.parametrize('name', [n for n, s in presets.SIZES.items() if s['published_params']])
def test_parameter_counts_match_published_sizes(name):
  published = presets.SIZES[name]['published_params']
  assert count_params(name) == pytest.approx(published, rel=0.025)


@pytest.mark.parametrize('name, exact', [
    ('gpt2-124m', 124_439_808),  # the released checkpoints' counts
    ('t5-small', 60_506_624), ('t5-base', 222_903_552),
    ('t5.1.1-small', 76_961_152), ('t5.1.1-base', 247_577_856),
    # HF's BartForConditionalGeneration counts, less its 2 unused position rows per stack.
    ('bart-base', 139_420_416 - 4 * 768), ('bart-large', 406_291_456 - 4 * 1024)])
def test_exact_parameter_counts(name, exact):
  assert count_params(name) == exact
