"""UniLM, XLNet and the prefix LM: objectives that are masks (and orders) on the one Block."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import generate, models
from research.models import masks, presets
from research.models.config import ModelConfig
from research.models.decoder import Decoder
from research.models.encoder import EncoderLM
from research.objectives import plm, unilm

TINY = dict(vocab_size=50, max_len=32, d_model=32, num_layers=2, num_heads=4, d_ff=64,
            dropout=0.0, attention_dropout=0.0)


def init(model, ids, **kwargs):
  params = nn.meta.unbox(model.init(jax.random.key(0), ids, **kwargs)['params'])
  return jax.tree.map(lambda x: x * 3, params)  # spread activations: no accidental ties


# --- XLNet


@pytest.fixture(scope='module')
def xlnet():
  cfg = ModelConfig(**{**presets.FAMILIES['bert'], **TINY, 'two_stream': True})
  model = EncoderLM(cfg)
  ids = jnp.arange(3, 11)[None]
  order = jnp.arange(8)[None]
  params = init(model, ids, mask_kind='causal', order=order, query_stream=True)
  return model, params


def streams(model, params, ids, order):
  out = model.apply({'params': params}, ids, mask_kind='causal', order=order,
                    query_stream=True)['encoder']
  return np.asarray(out.hidden[0]), np.asarray(out.query[0])


def test_xlnet_query_stream_never_sees_its_own_token(xlnet):
  """g_i predicts x_i: changing x_i changes the content stream at i, never the query at i."""
  model, params = xlnet
  ids, order = jnp.arange(3, 11)[None], jnp.array([[3, 0, 6, 1, 7, 2, 5, 4]])
  h, g = streams(model, params, ids, order)
  for i in range(8):
    h2, g2 = streams(model, params, ids.at[0, i].set(40), order)
    np.testing.assert_array_equal(g[i], g2[i])
    assert np.abs(h[i] - h2[i]).max() > 1e-6


def test_xlnet_content_stream_never_sees_later_tokens_in_the_order(xlnet):
  model, params = xlnet
  ids, order = jnp.arange(3, 11)[None], jnp.array([[3, 0, 6, 1, 7, 2, 5, 4]])
  h, g = streams(model, params, ids, order)
  for j in range(8):
    h2, g2 = streams(model, params, ids.at[0, j].set(40), order)
    for i in range(8):
      changed = np.abs(h[i] - h2[i]).max() > 1e-6
      assert changed == (order[0, j] <= order[0, i]), (i, j)  # itself and earlier in z only
      g_changed = np.abs(g[i] - g2[i]).max() > 1e-6
      assert g_changed == (order[0, j] < order[0, i]), (i, j)  # strictly earlier only


def test_xlnet_identity_order_k1_is_a_causal_lm(xlnet):
  """With z the identity and K=1 every position is predicted, each from the tokens before it
  only: the factorization of a left-to-right LM."""
  corrupt = plm.PermutationLM(partial_prediction=1).corruptor(None, seq_len=8)
  batch = corrupt({'input_ids': np.arange(3, 11)}, np.random.default_rng(0))
  assert batch['mlm_weights'].sum() == 8
  assert sorted(batch['order']) == list(range(8))
  model, params = xlnet
  ids, identity = jnp.arange(3, 11)[None], jnp.arange(8)[None]
  _, g = streams(model, params, ids, identity)
  for j in range(8):
    _, g2 = streams(model, params, ids.at[0, j].set(40), identity)
    diff = np.abs(g - g2).max(-1)
    assert (diff[:j + 1] == 0).all() and (diff[j + 1:] > 1e-6).all(), (j, diff)


def test_xlnet_predicts_the_last_sixth_of_the_order():
  corrupt = plm.PermutationLM().corruptor(None, seq_len=24)
  batch = corrupt({'input_ids': np.arange(24)}, np.random.default_rng(0))
  predicted = batch['mlm_weights'] > 0
  assert predicted.sum() == 4 and (batch['order'][predicted] >= 20).all()


# --- UniLM


class Tok:  # the fixed special ids of our tokenizer, without a model file
  pad_id, unk_id, bos_id, eos_id, cls_id, sep_id, mask_id = range(7)
  vocab_size = 50
  special_ids = tuple(range(7))


def unilm_rows(kind_wanted, seq_len=16):
  corrupt = unilm.UniLM(max_predictions=3).corruptor(Tok(), seq_len=seq_len)
  for seed in range(200):
    row = corrupt({'tokens': np.arange(10, 20)}, np.random.default_rng(seed))
    if unilm.KINDS[int(row['kind'])] == kind_wanted:
      return row
  raise AssertionError(kind_wanted)


@pytest.mark.parametrize('kind', unilm.KINDS)
def test_unilm_masks_from_row_data(kind):
  """The four UniLM masks (Dong et al. 2019, Fig. 1) built by masks.attention_mask from each
  row's order and prefix_len, and the segment id that names the objective."""
  row = unilm_rows(kind)
  length = int(row['attention_mask'].sum())
  m = np.asarray(masks.attention_mask(row['order'][None], row['order'][None],
                                      row['attention_mask'][None], kind='causal',
                                      prefix_len=row['prefix_len'][None]))[0, 0, :length, :length]
  lower = np.tril(np.ones((length, length), bool))
  if kind == 'bidirectional':
    expected = np.ones((length, length), bool)
  elif kind == 'l2r':
    expected = lower
  elif kind == 'r2l':
    expected = lower.T
  else:
    source = int(row['prefix_len'])
    expected = lower.copy()
    expected[:, :source] = True  # every token sees the whole source ...
    assert not m[:source, source:].any()  # ... and the source never sees the target
  np.testing.assert_array_equal(m, expected)
  segments = set(row['segment_ids'][:length].tolist())
  assert segments <= set(unilm.SEGMENTS[kind])
  assert row['mlm_weights'].sum() >= 1 and 'nsp_labels' not in row


def test_unilm_mix_follows_the_paper():
  counts = {k: 0 for k in unilm.KINDS}
  corrupt = unilm.UniLM().corruptor(Tok(), seq_len=16)
  for seed in range(600):
    row = corrupt({'tokens': np.arange(10, 20)}, np.random.default_rng(seed))
    counts[unilm.KINDS[int(row['kind'])]] += 1
  shares = {k: v / 600 for k, v in counts.items()}
  assert abs(shares['bidirectional'] - 1 / 3) < 0.06 and abs(shares['seq2seq'] - 1 / 3) < 0.06
  assert abs(shares['l2r'] - 1 / 6) < 0.05 and abs(shares['r2l'] - 1 / 6) < 0.05


def test_unilm_seq2seq_generation_equals_full_forward():
  """UniLM decoding (Sec 3.2): each next token is the prediction at a [MASK] after the text so
  far, under the seq2seq mask. Through the cache == one full pass per step."""
  cfg = ModelConfig(**{**presets.FAMILIES['bert'], **TINY, 'type_vocab_size': 6})
  model = EncoderLM(cfg)
  source = [[5, 9, 11, 12], [7, 8]]
  params = init(model, jnp.ones((1, 8), jnp.int32))
  mask_id = 6
  out = generate.decode(model, params, source, generate.Decoding(max_new_tokens=5),
                        start_id=mask_id, return_logits=True)
  for row, src in enumerate(source):
    new = out.tokens[row, :5].tolist()
    for t in range(5):
      ids = jnp.asarray([src + new[:t] + [mask_id]])
      segments = jnp.asarray([[4] * len(src) + [5] * (t + 1)])
      full = model.apply({'params': params}, ids, segments, mask_kind='causal',
                         prefix_len=jnp.asarray([len(src)]))['mlm_logits'][0, -1]
      np.testing.assert_allclose(out.logits[row, t], full, atol=1e-4, rtol=1e-4)


# --- prefix LM


def test_prefix_lm_mask_and_cached_generation():
  cfg = ModelConfig(**{**presets.FAMILIES['gpt2'], **TINY})
  model = Decoder(cfg)
  ids = jnp.arange(3, 11)[None]
  params = init(model, ids)
  logits = lambda x: np.asarray(model.apply({'params': params}, x,
                                            prefix_len=jnp.array([4])).logits[0])
  ref = logits(ids)
  for j in range(8):
    diff = np.abs(ref - logits(ids.at[0, j].set(40))).max(-1)
    seen_by = np.arange(8) >= j if j >= 4 else np.ones(8, bool)  # prefix: everyone sees it
    np.testing.assert_array_equal(diff > 1e-6, seen_by)
  prompts = [[3, 4, 5, 6], [9, 10]]
  out = generate.decode(model, params, prompts,
                        generate.Decoding(max_new_tokens=4, bidirectional_prompt=True),
                        return_logits=True)
  for row, prompt in enumerate(prompts):
    new = out.tokens[row, :4].tolist()
    full = model.apply({'params': params}, jnp.asarray([prompt + new]),
                       prefix_len=jnp.asarray([len(prompt)])).logits[0]
    np.testing.assert_allclose(out.logits[row], full[len(prompt) - 1:-1], atol=1e-4,
                               rtol=1e-4)


@pytest.mark.parametrize('prefix', [False, True])
def test_decoder_loss_on_a_few_target_positions_projects_only_those(prefix):
  """Fine-tuning a decoder on a target after its prompt: CausalLM(max_predictions=k) gathers
  the k weighted positions before the LM head; loss and accuracy equal the full projection's,
  and the logits it computes are [batch, k, vocab]."""
  from research.objectives import base, clm, prefix_lm
  cfg = ModelConfig(**{**presets.FAMILIES['gpt2'], **TINY})
  model = Decoder(cfg)
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 50, size=(4, 17)).astype(np.int32)
  prompt = np.array([5, 9, 3, 12])  # targets of up to 6 tokens after each prompt
  answer = np.array([6, 4, 1, 5])
  weights = ((np.arange(16) >= prompt[:, None] - 1)
             & (np.arange(16) < (prompt + answer)[:, None] - 1)).astype(np.float32)
  batch = {'input_ids': ids[:, :-1], 'targets': ids[:, 1:], 'weights': weights,
           'prefix_len': prompt.astype(np.int32)}
  params = init(model, batch['input_ids'])
  mask = {'prefix_len': batch['prefix_len']} if prefix else {}
  predicted = model.apply({'params': params}, batch['input_ids'], **mask).logits.argmax(-1)
  batch['targets'][:, ::2] = predicted[:, ::2]  # right at every other position
  objective = prefix_lm.PrefixLM if prefix else clm.CausalLM
  full = base.means(objective().terms(model, params, batch, rng=None))
  few = base.means(objective(max_predictions=6).terms(model, params, batch, rng=None))
  assert full['loss'] > 0.1 and 0 < full['accuracy'] < 1
  np.testing.assert_allclose(few['loss'], full['loss'], rtol=1e-5)
  np.testing.assert_allclose(few['accuracy'], full['accuracy'], rtol=1e-6)
  shapes = jax.eval_shape(lambda: model.apply({'params': params}, batch['input_ids'],
                                              logit_positions=jnp.zeros((4, 6), jnp.int32)))
  assert shapes.logits.shape == (4, 6, 50)


def test_every_objective_trains_its_arch():
  from research import objectives
  for name, arch in [('unilm', 'encoder'), ('plm', 'encoder'), ('prefix_lm', 'decoder')]:
    assert arch in objectives.from_config(_objective_cfg(name)).archs
  with pytest.raises(ValueError, match="trains encoder"):
    objectives.from_config(_objective_cfg('plm')).check_arch('decoder')
  assert models.PRETRAINING_MODELS['encoder'] is EncoderLM


def _objective_cfg(name):
  import ml_collections
  return ml_collections.ConfigDict({
      'name': name, 'mask_prob': 0.15, 'mask_token_prob': 0.8, 'random_token_prob': 0.1,
      'max_predictions_per_seq': 5, 'short_seq_prob': 0.1, 'partial_prediction': 6,
      'plm_bidirectional_context': True, 'ngram_prob': 0.2, 'max_ngram': 3})
