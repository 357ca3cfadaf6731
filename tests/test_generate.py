"""The decoding engine: cache == full forward at every step, strategies agree where they must."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import generate
from research.models import presets, prompting
from research.models.config import ModelConfig
from research.models.decoder import Decoder
from research.models.encoder_decoder import EncoderDecoder

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [20]]


def tiny_gpt(**kw):
  cfg = ModelConfig(**{**presets.FAMILIES['gpt2'], 'vocab_size': 97, 'max_len': 64, 'd_model': 32,
                       'num_layers': 2, 'num_heads': 4, 'd_ff': 64, 'dropout': 0.0,
                       'attention_dropout': 0.0, **kw})
  model = Decoder(cfg)
  # A larger init spreads the logits, so greedy choices are not near-ties.
  params = jax.jit(lambda: nn.meta.unbox(
      model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params']))()
  return model, jax.tree.map(lambda x: x * 4, params)


@pytest.fixture(scope='module')
def gpt():
  return tiny_gpt()


@functools.partial(jax.jit, static_argnums=0)
def forward_logits(model, params, ids):
  return model.apply({'params': params}, ids).logits


def sequence_logits(model, params, prompt, new):
  """No cache: the whole sequence in one pass; logits that predicted each new token."""
  # Right padding to one length (one compilation) cannot change earlier causal logits.
  ids = jnp.asarray([prompt + new + [0] * (32 - len(prompt) - len(new))])
  return forward_logits(model, params, ids)[0, len(prompt) - 1:len(prompt) - 1 + len(new)]


@pytest.mark.parametrize('local_window,temperature', [(0, 0.0), (3, 0.0), (0, 1.0)])
def test_cached_decoding_equals_full_forward_at_every_step(local_window, temperature):
  """Through the jitted loop: left-padded prompts, per-row positions, GPT-3 local bands."""
  model, params = tiny_gpt(local_window=local_window)
  decoding = generate.Decoding(max_new_tokens=10, temperature=temperature, seed=3)
  out = generate.decode(model, params, PROMPTS, decoding, return_logits=True)
  for row, prompt in enumerate(PROMPTS):
    new = out.tokens[row, :10].tolist()
    np.testing.assert_allclose(out.logits[row], sequence_logits(model, params, prompt, new),
                               atol=1e-4, rtol=1e-4)
    if temperature == 0:
      assert new == np.argmax(out.logits[row], -1).tolist()


@pytest.mark.parametrize('family,temperature', [
    ('t5', 0.0), pytest.param('bart', 0.0, marks=pytest.mark.slow), ('t5', 1.0)])
def test_encoder_decoder_decoding_equals_teacher_forcing(family, temperature):
  """Through the jitted loop: sources of different lengths (right-padded), the encoder run
  once and its keys/values cached; every step's logits equal a full teacher-forced pass over
  the start token + the tokens generated so far. Beam width 1 equals greedy."""
  cfg = ModelConfig(**{**presets.FAMILIES[family], 'vocab_size': 97, 'max_len': 64,
                       'd_model': 32, 'num_layers': 2, 'num_heads': 4, 'd_ff': 64,
                       'dropout': 0.0, 'attention_dropout': 0.0,
                       # The 0.02 init the x4 below was chosen for: Mesh TF's fan-in init
                       # (T5's default) x4 gives logits of ~35, where float32 rounding alone
                       # exceeds the 1e-4 tolerance between the two decoding paths.
                       'init': 'normal'})
  model = EncoderDecoder(cfg)
  ids = jnp.zeros((1, 4), jnp.int32)
  params = jax.tree.map(lambda x: x * 4, jax.jit(lambda: nn.meta.unbox(
      model.init(jax.random.key(0), ids, ids)['params']))())
  decoding = generate.Decoding(max_new_tokens=8, temperature=temperature, seed=1)
  out = generate.decode(model, params, PROMPTS, decoding, start_id=0, return_logits=True)
  for row, source in enumerate(PROMPTS):
    new = out.tokens[row, :8].tolist()
    full = model.apply({'params': params}, jnp.asarray([source]),
                       jnp.asarray([[0] + new[:-1]])).logits[0]
    np.testing.assert_allclose(out.logits[row], full, atol=1e-4, rtol=1e-4)
  if temperature == 0:
    beam = generate.decode(model, params, PROMPTS, generate.Decoding(max_new_tokens=8,
                                                                     num_beams=1), start_id=0)
    np.testing.assert_array_equal(beam.tokens[:, :8], out.tokens[:, :8])


def test_batch_gives_each_prompt_its_own_result(gpt):
  model, params = gpt
  for kw in (dict(), dict(num_beams=3)):
    together = generate.generate(model, params, PROMPTS, max_new_tokens=6, **kw)
    alone = [generate.generate(model, params, [p], max_new_tokens=6, **kw)[0] for p in PROMPTS]
    assert together == alone, kw


def test_beam_width_one_equals_greedy(gpt):
  """Without stop tokens one beam is greedy. (With them it may differ, rightly: the runner-up
  token of a step can be EOS, and that finished hypothesis can outscore the greedy one.)"""
  model, params = gpt
  greedy = generate.decode(model, params, PROMPTS, generate.Decoding(max_new_tokens=8)).tokens
  beam = generate.beam_search(model, params, PROMPTS, generate.Decoding(
      max_new_tokens=8, num_beams=1, length_penalty=0.6)).tokens
  np.testing.assert_array_equal(beam[:, :8], greedy[:, :8])


def test_wider_beams_find_likelier_sequences(gpt):
  model, params = gpt

  def log_prob(prompt, new):
    logits = sequence_logits(model, params, prompt, new)
    chosen = jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(new)[:, None], 1)
    return float(chosen.sum())

  greedy = generate.generate(model, params, PROMPTS, max_new_tokens=6)
  beams = generate.decode(model, params, PROMPTS, generate.Decoding(
      max_new_tokens=6, num_beams=4, length_penalty=0.0))
  for prompt, g, b, score in zip(PROMPTS, greedy, beams.tokens, beams.scores):
    b = b[:6].tolist()
    assert log_prob(prompt, b) == pytest.approx(score, abs=1e-4)
    assert log_prob(prompt, b) >= log_prob(prompt, g) - 1e-5


def test_gnmt_length_penalty():
  assert generate.gnmt_length_penalty(1, 0.6) == pytest.approx(1.0)
  assert generate.gnmt_length_penalty(7, 1.0) == pytest.approx(2.0)  # (5 + 7) / 6


def test_top_k_one_and_tiny_top_p_equal_greedy(gpt):
  model, params = gpt
  greedy = generate.generate(model, params, PROMPTS, max_new_tokens=8)
  for kw in (dict(top_k=1, seed=1), dict(top_k=1, seed=2), dict(top_p=1e-6, seed=1)):
    assert generate.generate(model, params, PROMPTS, max_new_tokens=8, temperature=1.0,
                             **kw) == greedy, kw


def test_sampling_is_reproducible_with_a_seed(gpt):
  model, params = gpt
  sample = lambda seed, **kw: generate.generate(model, params, PROMPTS, max_new_tokens=12,
                                                temperature=1.5, seed=seed, **kw)
  assert sample(0) == sample(0)
  assert sample(0) != sample(1)
  assert sample(4, top_k=5, top_p=0.9) == sample(4, top_k=5, top_p=0.9)


def test_top_k_samples_only_among_the_k_best(gpt):
  model, params = gpt
  out = generate.decode(model, params, PROMPTS, generate.Decoding(
      max_new_tokens=12, temperature=2.0, top_k=3, seed=5), return_logits=True)
  top3 = np.argsort(out.logits, -1)[..., -3:]  # [batch, steps, 3]
  assert (out.tokens[:, :12, None] == top3).any(-1).all()


def test_eos_stops_each_row(gpt):
  model, params = gpt
  free = generate.generate(model, params, PROMPTS, max_new_tokens=8)
  eos = free[1][2]
  stopped = generate.generate(model, params, PROMPTS, max_new_tokens=8, eos_id=eos)
  for row, tokens in zip(free, stopped):
    expected = row[:row.index(eos)] if eos in row else row
    assert tokens == expected
  assert len(stopped[1]) == 2


def test_new_prompt_lengths_reuse_the_compiled_loop(gpt):
  model, params = gpt
  generate.generate(model, params, [[1, 2, 3]], max_new_tokens=5)
  compiled = generate._sample_loop._cache_size()
  generate.generate(model, params, [[1, 2, 3, 4, 5, 6]], max_new_tokens=7, seed=3)
  assert generate._sample_loop._cache_size() == compiled


def test_plan_lengths():
  assert prompting.plan_lengths(3, 10, 64) == (16, 48)
  assert prompting.plan_lengths(20, 128, 1024) == (32, 160)
  assert prompting.plan_lengths(33, 30, 64) == (34, 64)  # clipped to the position table
  with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
    prompting.plan_lengths(40, 30, 64)


def test_bad_decoding_settings_are_clear_errors(gpt):
  model, params = gpt
  with pytest.raises(ValueError, match='empty prompt'):
    generate.generate(model, params, [[1, 2], []])
  with pytest.raises(ValueError, match='set temperature > 0'):
    generate.Decoding(top_k=5)
  with pytest.raises(ValueError, match='beam search is deterministic'):
    generate.Decoding(num_beams=4, temperature=1.0)
  with pytest.raises(ValueError, match='top_p'):
    generate.Decoding(temperature=1.0, top_p=0.0)


def test_greedy_token_is_argmax_first_index_on_ties():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(6, 1000)), jnp.float32)
  logits = logits.at[1, 7].set(9.0).at[1, 500].set(9.0)  # a tie: the first index wins
  logits = logits.at[2].set(-jnp.inf).at[2, 999].set(0.0)  # only the last is finite
  np.testing.assert_array_equal(generate.greedy_token(logits), np.argmax(logits, -1))
  assert generate.greedy_token(logits)[1] == 7
  assert 0 <= generate.greedy_token(logits.at[3, 5].set(jnp.nan))[3] < 1000  # stays in range
