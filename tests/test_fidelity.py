"""Each family against its reference implementation's semantics where a detail changes how the
model learns: T5's prefix-LM buckets, initialisation and dropout (Mesh TensorFlow / HF T5),
XLNet's context tokens (zihangdai/xlnet `_local_perm`), UniLM's n-gram masking (UniLM v1
Sec 2.2)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import presets
from research.models.config import ModelConfig
from research.models.decoder import Decoder
from research.models.encoder_decoder import EncoderDecoder
from research.models.layers import RelativePositionBias
from research.models.masks import relative_position_bucket

TINY = dict(vocab_size=97, max_len=32, d_model=32, num_layers=2, num_heads=4, d_ff=64,
            dropout=0.0, attention_dropout=0.0)


def t5_decoder(**kw):
  """A T5-style decoder-only model (T5 Table 2's LM and prefix LM arms)."""
  return ModelConfig(**{**presets.FAMILIES['t5'], **TINY, 'arch': 'decoder', **kw})


def init(model, *args):
  return nn.meta.unbox(model.init(jax.random.key(0), *args)['params'])


def test_prefix_lm_prefix_tells_its_right_context_apart():
  """Mesh TF `compute_bias`: bidirectional buckets whenever the model is not fully
  autoregressive. With causal buckets every key right of a prefix token falls into bucket 0,
  so the first token of a 4-token prefix could not tell `a b c d` from `a b d c`."""
  model = Decoder(t5_decoder())
  ids = jnp.array([[5, 6, 7, 8, 9, 10]])
  swapped = jnp.array([[5, 6, 8, 7, 9, 10]])  # two prefix tokens right of position 0 swap
  params = init(model, ids)
  prefix = jnp.array([4])
  hidden = lambda x: model.apply({'params': params}, x, prefix_len=prefix).hidden[0, 0]
  assert np.abs(hidden(ids) - hidden(swapped)).max() > 1e-4


def test_causal_lm_keeps_unidirectional_buckets():
  """Without a prefix the decoder's stack reads the causal bias (all 32 buckets look left):
  its output is the stack's under causal buckets and not under bidirectional ones."""
  model = Decoder(t5_decoder())
  ids = jnp.arange(1, 21)[None]
  params = init(model, ids)
  slots = jnp.arange(20)[None]
  causal_mask = (jnp.tril(jnp.ones((1, 1, 20, 20), bool)), None)
  stack = lambda m, x, causal: m.stack(m.embeddings(x, slots, deterministic=True), causal_mask,
                                       causal=causal, positions=(slots, slots),
                                       deterministic=True).hidden
  hidden = model.apply({'params': params}, ids).hidden
  causal = model.apply({'params': params}, ids, True, method=stack)
  bidirectional = model.apply({'params': params}, ids, False, method=stack)
  np.testing.assert_allclose(hidden, causal, atol=1e-6)
  assert np.abs(hidden - bidirectional).max() > 1e-4


def test_prefix_lm_cached_decoding_equals_full_forward():
  """A bidirectional prefill carries its prefix_len in the cache, so every decoding step uses
  the prefix LM's buckets and reproduces the full forward pass."""
  model = Decoder(t5_decoder())
  ids = jax.random.randint(jax.random.key(1), (2, 10), 1, 97)
  params = init(model, ids)
  prompt = 4
  full = model.apply({'params': params}, ids, prefix_len=jnp.full((2,), prompt)).logits
  logits, cache, lengths = model.apply({'params': params}, ids[:, :prompt],
                                       jnp.ones((2, prompt), jnp.int32), 10, True,
                                       method='prefill')
  steps = [logits]
  for t in range(prompt, 10):
    logits, cache = model.apply({'params': params}, ids[:, t], lengths + t - prompt, cache, t,
                                method='decode_step')
    steps.append(logits)
  np.testing.assert_allclose(jnp.stack(steps, 1), full[:, prompt - 1:], atol=1e-5)


def test_relative_buckets_of_a_prefix_see_both_directions():
  """The buckets a 4-token prefix's first token gives keys 1..3: distinct with bidirectional
  buckets (1, 2, 3 ahead), all 0 with causal ones (the bug this guards against)."""
  offsets = jnp.array([1, 2, 3])
  assert relative_position_bucket(offsets, bidirectional=True).tolist() == [17, 18, 19]
  assert relative_position_bucket(offsets, bidirectional=False).tolist() == [0, 0, 0]


@pytest.mark.parametrize('family', ['t5', 't5.1.1'])
def test_t5_init_follows_mesh_tensorflow(family):
  """HF `T5PreTrainedModel._init_weights` (Mesh TF's variance scaling): q (d_model d_kv)^-1/2,
  k and v d_model^-1/2, o (heads d_kv)^-1/2, wi d_model^-1/2, wo d_ff^-1/2, the relative
  bias table d_model^-1/2, the embeddings 1."""
  d_model, heads, d_kv, d_ff = 256, 4, 32, 512
  cfg = ModelConfig(**{**presets.FAMILIES[family], 'vocab_size': 512, 'max_len': 16,
                       'd_model': d_model, 'num_layers': 1, 'num_heads': heads, 'd_head': d_kv,
                       'd_ff': d_ff})
  params = init(EncoderDecoder(cfg), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 3), jnp.int32))
  layer = params['encoder']['layer_0']
  attention, mlp = layer['attention'], layer['mlp']
  wi = mlp['wi_0'] if cfg.mlp == 'gated' else mlp['wi']
  expected = {
      'q': (attention['query']['kernel'], (d_model * d_kv) ** -0.5),
      'k': (attention['key']['kernel'], d_model ** -0.5),
      'v': (attention['value']['kernel'], d_model ** -0.5),
      'o': (attention['out']['kernel'], (heads * d_kv) ** -0.5),
      'wi': (wi['kernel'], d_model ** -0.5),
      'wo': (mlp['wo']['kernel'], d_ff ** -0.5),
      'cross k': (params['decoder']['layer_0']['cross_attention']['key']['kernel'],
                  d_model ** -0.5),
      'relative bias': (params['encoder']['relative_bias']['embedding'], d_model ** -0.5),
      'embedding': (params['shared']['embedding'], 1.0),
  }
  if not cfg.tie_output:
    expected['lm head'] = (params['lm_head']['kernel'], d_model ** -0.5)
  for name, (kernel, std) in expected.items():
    # 128 draws at the least (the bias table): 25% covers their sampling error many times over.
    assert abs(float(jnp.std(kernel)) / std - 1) < 0.25, (name, float(jnp.std(kernel)), std)


def test_normal_init_keeps_the_old_t5_parametrisation():
  """init='normal' (the ablation switch): every kernel at init_std, the query /sqrt(d_kv)."""
  cfg = ModelConfig(**{**presets.FAMILIES['t5'], 'vocab_size': 512, 'max_len': 16,
                       'd_model': 256, 'num_layers': 1, 'num_heads': 4, 'd_head': 32,
                       'd_ff': 512, 'init': 'normal'})
  params = init(EncoderDecoder(cfg), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 3), jnp.int32))
  attention = params['encoder']['layer_0']['attention']
  assert abs(float(jnp.std(attention['query']['kernel'])) / (0.02 / 32 ** 0.5) - 1) < 0.1
  assert abs(float(jnp.std(attention['key']['kernel'])) / 0.02 - 1) < 0.1


def dropout_outputs(cfg, deterministic=False):
  """Outputs of every Dropout module of an encoder-decoder's forward pass, by module path."""
  model = EncoderDecoder(cfg)
  source, target = jnp.ones((2, 6), jnp.int32), jnp.ones((2, 5), jnp.int32)
  params = init(model, source, target)
  _, state = model.apply({'params': params}, source, target, deterministic=deterministic,
                         rngs={'dropout': jax.random.key(3)}, capture_intermediates=True,
                         mutable=['intermediates'])
  flat = jax.tree_util.tree_flatten_with_path(state['intermediates'])[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): x for path, x in flat
          if 'Dropout' in str(getattr(path[-3], 'key', ''))}


@pytest.mark.parametrize('family', ['t5', 't5.1.1'])
def test_t5_drops_mlp_hidden_units_and_stack_outputs(family):
  """Mesh TF `dense_relu_dense` / HF T5DenseActDense drop the MLP's hidden units before wo,
  and HF T5Stack drops the output of the final norm: both at the model's dropout rate."""
  cfg = ModelConfig(**{**presets.FAMILIES[family], **TINY, 'dropout': 0.5})
  outputs = dropout_outputs(cfg)
  mlp = [x for path, x in outputs.items() if '/mlp/' in path]
  assert mlp and all(x.shape[-1] == cfg.d_ff for x in mlp)  # the hidden units [.., d_ff]
  # About half the units are zeroed (ReLU zeroes half of T5 v1.0's before the dropout).
  zeroed = 0.75 if cfg.activation == 'relu' else 0.5
  assert all(abs(float(jnp.mean(x == 0)) - zeroed) < 0.15 for x in mlp)
  # The stacks' own (paths 'encoder/Dropout_0/__call__/0'), not their layers'.
  stack_level = lambda paths: sorted(p.split('/')[0] for p in paths if p.count('/') == 3
                                     and p.split('/')[0] in ('encoder', 'decoder'))
  assert stack_level(outputs) == ['decoder', 'encoder'], sorted(outputs)
  baseline = dropout_outputs(cfg.replace(mlp_dropout=False, final_dropout=False))
  assert not [p for p in baseline if '/mlp/' in p] and not stack_level(baseline)


def xlnet_reference_masks(targets: np.ndarray, rank: np.ndarray):
  """zihangdai/xlnet `_local_perm` without functional tokens: rev_index = -1 for the tokens
  not predicted, the permutation rank for the predicted; i may not attend j iff j is predicted
  and rev_index[i] (+1 unless i is predicted) <= rev_index[j]. The content stream also sees
  itself. Returns (content, query) bool [L, L], True where i may attend j."""
  rev = np.where(targets, rank, -1)
  self_rev = np.where(targets, rev, rev + 1)
  blocked = (self_rev[:, None] <= rev[None, :]) & targets[None, :]
  query = ~blocked
  return query | np.eye(len(targets), dtype=bool), query


def test_xlnet_context_tokens_see_each_other_as_in_the_reference():
  """The order our corruptor writes gives exactly the reference's masks: context tokens see
  every context token both ways and no predicted one; a predicted token sees the context and
  the predicted tokens before it (and itself in the content stream)."""
  from research.models import masks  # pylint: disable=g-import-not-at-top
  from research.objectives import plm  # pylint: disable=g-import-not-at-top
  corrupt = plm.PermutationLM().corruptor(None, seq_len=24)
  for seed in range(5):
    row = corrupt({'input_ids': np.arange(24)}, np.random.default_rng(seed))
    targets, order = row['mlm_weights'] > 0, jnp.asarray(row['order'])[None]
    assert targets.sum() == 4
    content, query = xlnet_reference_masks(targets, np.asarray(row['order']))
    ours = lambda kind: np.asarray(masks.attention_mask(order, order, kind=kind))[0, 0]
    np.testing.assert_array_equal(ours('causal'), content)
    # Only the predicted tokens' query stream is read (the loss); the reference lets a context
    # token's query see the context, ours nothing: neither reaches any output.
    np.testing.assert_array_equal(ours('strictly_causal')[targets], query[targets])
    context = ~targets
    assert content[np.ix_(context, context)].all()  # both ways, unlike a causal order


def test_xlnet_causal_context_switch_keeps_the_permutation():
  from research.objectives import plm  # pylint: disable=g-import-not-at-top
  corrupt = plm.PermutationLM(bidirectional_context=False).corruptor(None, seq_len=24)
  row = corrupt({'input_ids': np.arange(24)}, np.random.default_rng(0))
  assert sorted(row['order']) == list(range(24))


def mean_run(chosen: np.ndarray) -> float:
  """Mean length of the runs of consecutive chosen positions."""
  edges = np.diff(np.concatenate([[0], chosen.astype(int), [0]]))
  return chosen.sum() / (edges == 1).sum()


@pytest.mark.parametrize('ngram_prob,low,high', [(0.0, 1.0, 1.1), (0.2, 1.15, 1.45),
                                                 (1.0, 2.3, 2.7)])
def test_unilm_masks_bigrams_and_trigrams(ngram_prob, low, high):
  """UniLM Sec 2.2: a masked unit is one token 80% of the time, a bigram or trigram 20%: the
  mean unit is 0.8 + 0.1 * 2 + 0.1 * 3 = 1.3 tokens (2.5 when every unit is an n-gram), and
  the number of predictions is the same budget as BERT's."""
  from research.objectives import mlm  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  candidates = np.ones(2000, bool)
  runs = []
  for _ in range(20):
    chosen = mlm.ngram_positions(candidates, 60, rng, ngram_prob=ngram_prob, max_ngram=3) \
        if ngram_prob else mlm.mask_tokens(
            np.arange(2000), candidates, rng, vocab_size=3000, mask_id=1, mask_prob=0.03,
            mask_token_prob=0.8, random_token_prob=0.1, max_predictions=60)[2] > 0
    assert chosen.sum() == 60
    runs.append(mean_run(chosen))
  assert low < np.mean(runs) < high, np.mean(runs)


def test_unilm_objective_masks_ngrams_within_its_budget():
  from research import objectives  # pylint: disable=g-import-not-at-top
  from research.objectives import unilm  # pylint: disable=g-import-not-at-top
  from configs import base  # pylint: disable=g-import-not-at-top
  c = base.get_config().objective
  c.name = 'unilm'
  objective = objectives.from_config(c)
  assert (objective.ngram_prob, objective.max_ngram) == (0.2, 3)

  class Tok:  # our tokenizer's special ids, without a model file
    pad_id, unk_id, bos_id, eos_id, cls_id, sep_id, mask_id = range(7)
    vocab_size = 500
    special_ids = tuple(range(7))
  corrupt = unilm.UniLM(max_predictions=40).corruptor(Tok(), seq_len=256)
  runs = []
  for seed in range(20):
    row = corrupt({'tokens': np.arange(10, 250)}, np.random.default_rng(seed))
    predicted = row['mlm_weights'] > 0
    assert predicted.sum() == 36  # round(240 * 0.15), under max_predictions
    assert not predicted[row['input_ids'] == Tok.sep_id].any()
    runs.append(mean_run(predicted))
  # Mean run of masked positions over 20 rows: 1.16 with single tokens only (ngram_prob=0),
  # 1.47 with UniLM's n-grams.
  assert np.mean(runs) > 1.3
