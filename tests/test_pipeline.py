"""grain pipelines: batch format, determinism, exact resume, sharding, eval."""

import json
import time
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import objectives
from research.objectives import base
from research.models import presets
from research.models.config import ModelConfig
from research.models.vocab_loss import vocab_cross_entropy
from research.data import corpus, pipeline
from research.data import tokenizer as tokenizer_lib

SEQ_LEN = 32
BERT_KEYS = {'input_ids', 'segment_ids', 'attention_mask', 'mlm_targets',
             'mlm_weights', 'nsp_labels', 'nsp_weights'}
CLM_KEYS = {'input_ids', 'targets', 'weights'}


def _config(objective='mlm_nsp', seed=0, max_seq_len=SEQ_LEN):
  return ml_collections.ConfigDict({
      'data': {'corpus': '', 'eval_corpus': '', 'eval_every': 20,
               'max_seq_len': max_seq_len, 'seed': seed},
      'objective': {'name': objective, 'mask_prob': 0.15,
                    'mask_token_prob': 0.8, 'random_token_prob': 0.1,
                    'max_predictions_per_seq': 5, 'short_seq_prob': 0.1,
                    'noise_density': 0.15, 'mean_noise_span_length': 3.0,
                    'num_sentinels': 100, 'bidirectional_inputs': False, 'noises': 'infilling,permute', 'mask_ratio': 0.3,
                    'random_ratio': 0.1, 'poisson_lambda': 3.0, 'replace_length': 1,
                    'insert_ratio': 0.0, 'permute_ratio': 1.0, 'rotate_ratio': 1.0},
  })


def _objective(config, arch='encoder_decoder'):
  model = ModelConfig(**{**presets.architecture('bart-tiny' if config.objective.name == 'denoising'
                                                else 't5-tiny'), 'vocab_size': 1, 'arch': arch})
  return objectives.from_config(config.objective, model)


def _ds(config, tok, documents, **kw):
  return pipeline.make_train_dataset(config, _objective(config), tok, documents, **kw)


def _eval(config, tok, documents, **kw):
  return pipeline.make_eval_batches(config, _objective(config), tok, documents, **kw)


def _examples(config, tok, documents):
  return _objective(config).examples(tok, pipeline.tokenize_documents(tok, documents),
                                     seq_len=config.data.max_seq_len, seed=config.data.seed)


@pytest.fixture(scope='module')
def documents():
  """30 documents of 3-12 'sentences' of made-up words."""
  rng = np.random.default_rng(0)
  words = [''.join(rng.choice(list('abcdefghijklmnop'), size=rng.integers(2, 7)))
           for _ in range(200)]
  return [[' '.join(rng.choice(words, size=rng.integers(3, 15))) + '.'
           for _ in range(rng.integers(3, 13))] for _ in range(30)]


@pytest.fixture(scope='module')
def tok(documents, tmp_path_factory):
  return tokenizer_lib.train_tokenizer(
      [line for doc in documents for line in doc],
      tmp_path_factory.mktemp('tok') / 'tokenizer.model', 500, 'bpe', 200_000)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _unmasked_rows(batch):
  """Each row's original token ids (undoing MLM corruption), as tuples."""
  ids = batch['input_ids']
  if 'mlm_weights' in batch:
    ids = np.where(batch['mlm_weights'] > 0, batch['mlm_targets'], ids)
  return [tuple(row) for row in ids]


@pytest.mark.parametrize('objective', ['mlm_nsp', 'mlm'])
def test_bert_batch_format(objective, tok, documents):
  ds = _ds(_config(objective), tok, documents, batch_size=16)
  batch = next(iter(ds))
  assert set(batch) == BERT_KEYS
  for key in BERT_KEYS - {'nsp_labels', 'nsp_weights'}:
    assert batch[key].shape == (16, SEQ_LEN), key
  assert batch['nsp_labels'].shape == batch['nsp_weights'].shape == (16,)
  for key in ('input_ids', 'segment_ids', 'attention_mask', 'mlm_targets', 'nsp_labels'):
    assert batch[key].dtype == np.int32, key
  assert batch['mlm_weights'].dtype == batch['nsp_weights'].dtype == np.float32

  ids, segments, real = batch['input_ids'], batch['segment_ids'], batch['attention_mask']
  np.testing.assert_array_equal(real, ids != tok.pad_id)
  assert (ids[:, 0] == tok.cls_id).all()
  lengths = real.sum(1)
  assert (ids[np.arange(16), lengths - 1] == tok.sep_id).all()
  assert (real == (np.arange(SEQ_LEN) < lengths[:, None])).all()  # padding last
  assert (segments[real == 0] == 0).all()
  # Segment ids go 0...0 1...1: one switch at most, right after the first [SEP].
  assert (np.diff(segments, axis=1) >= 0)[real[:, 1:] == 1].all()
  weights = batch['mlm_weights']
  assert ((weights > 0) <= ((real == 1) & (ids != tok.cls_id))).all()
  assert (weights.sum(1) >= 1).all() and (weights.sum(1) <= 5).all()
  original = np.where(weights > 0, batch['mlm_targets'], ids)
  assert not np.isin(original[weights > 0], tok.special_ids).any()
  if objective == 'mlm_nsp':
    assert (batch['nsp_weights'] == 1).all() and segments.any()
    assert set(np.unique(batch['nsp_labels'])) <= {0, 1}
  else:  # NSP off: one segment, no NSP loss.
    assert (batch['nsp_weights'] == 0).all() and not segments.any()
    assert (batch['nsp_labels'] == 0).all()
    assert (original == tok.sep_id).sum(1).tolist() == [1] * 16


def test_clm_batch_format(tok, documents):
  ds = _ds(_config('clm'), tok, documents, batch_size=8)
  batch = next(iter(ds))
  assert set(batch) == CLM_KEYS
  assert batch['input_ids'].shape == batch['targets'].shape == (8, SEQ_LEN)
  assert batch['input_ids'].dtype == batch['targets'].dtype == np.int32
  assert batch['weights'].dtype == np.float32 and (batch['weights'] == 1).all()
  np.testing.assert_array_equal(batch['input_ids'][:, 1:], batch['targets'][:, :-1])
  assert (batch['targets'] == tok.eos_id).any()


SEQ2SEQ_KEYS = {'input_ids', 'attention_mask', 'decoder_input_ids', 'decoder_mask', 'targets',
                'weights'}


def test_span_corruption_batch_format(tok, documents):
  """T5: 32 encoder tokens come from random_spans_helper's raw window; every target span
  starts with a sentinel counting down from the top of the (tokenizer + 100) vocabulary."""
  batch = next(iter(_ds(_config('span_corruption'), tok, documents, batch_size=8)))
  assert set(batch) == SEQ2SEQ_KEYS | {'span_weights'}
  raw, targets_len = _objective(_config('span_corruption')).lengths(SEQ_LEN)
  assert batch['input_ids'].shape == (8, SEQ_LEN)
  assert batch['targets'].shape == (8, targets_len)
  assert (batch['attention_mask'] == 1).all()  # full windows fill the encoder exactly
  vocab = tok.vocab_size + 100
  sentinel = batch['targets'] >= tok.vocab_size
  assert (batch['targets'][:, 0] == vocab - 1).all()  # the first span's sentinel
  assert ((batch['input_ids'] >= tok.vocab_size).sum(1) == sentinel.sum(1)).all()
  # Decoder inputs: the pad start token, then the targets shifted right.
  assert (batch['decoder_input_ids'][:, 0] == tok.pad_id).all()
  np.testing.assert_array_equal(batch['decoder_input_ids'][:, 1:], batch['targets'][:, :-1])
  # The targets end with EOS at the last weighted position.
  last = batch['weights'].sum(1).astype(int) - 1
  assert (batch['targets'][np.arange(8), last] == tok.eos_id).all()
  # span_weights: the weighted targets but the sentinels and EOS.
  text = (batch['weights'] > 0) & ~sentinel & (batch['targets'] != tok.eos_id)
  np.testing.assert_array_equal(batch['span_weights'], text)


class _ScriptedModel:
  """A 'model' whose logits put all mass on `predict(targets)` (known to it in advance): it
  scores the objective's `vocab_targets` through the real fused loss, with those one-hot rows
  as hidden states and the identity as the output kernel."""

  def __init__(self, targets, predict, vocab):
    self.hidden = jax.nn.one_hot(predict(targets), vocab)  # [batch, length, vocab]

  def apply(self, variables, *args, deterministic, rngs, vocab_targets, **kwargs):
    identity = jnp.eye(self.hidden.shape[-1])
    return types.SimpleNamespace(vocab_loss=vocab_cross_entropy(self.hidden, identity,
                                                                *vocab_targets))


@pytest.mark.parametrize('arch', ['encoder_decoder', 'decoder'])
def test_span_accuracy_credits_only_the_dropped_text(tok, documents, arch):
  """A model that has learned only the sentinels' countdown and EOS (a quarter or more of the
  targets) scores on plain accuracy and 0 on span_accuracy; a perfect one scores 1 on both."""
  objective = _objective(_config('span_corruption'), arch=arch)
  batch = next(iter(pipeline.make_train_dataset(_config('span_corruption'), objective, tok,
                                                documents, batch_size=8)))
  vocab, targets = tok.vocab_size + 100, batch['targets']
  given_away = (targets >= tok.vocab_size) | (targets == tok.eos_id)
  only_given_away = lambda t: np.where(given_away, t, tok.pad_id)
  terms = base.means(objective.terms(_ScriptedModel(targets, only_given_away, vocab), {},
                                     batch, rng=None))
  assert terms['accuracy'] > 0.2 and terms['span_accuracy'] == 0.0
  perfect = base.means(objective.terms(_ScriptedModel(targets, lambda t: t, vocab), {}, batch,
                                       rng=None))
  assert perfect['accuracy'] == perfect['span_accuracy'] == 1.0


def test_denoising_batch_format(tok, documents):
  """BART: the target is the clean <s> ... </s> chunk; the source its noised copy (infilled
  spans, shuffled sentences); the decoder starts from </s>."""
  batch = next(iter(_ds(_config('denoising'), tok, documents, batch_size=8)))
  assert set(batch) == SEQ2SEQ_KEYS
  assert batch['input_ids'].shape == batch['targets'].shape == (8, SEQ_LEN)
  assert (batch['targets'][:, 0] == tok.bos_id).all()
  assert (batch['input_ids'][:, 0] == tok.bos_id).all()
  assert (batch['decoder_input_ids'][:, 0] == tok.eos_id).all()
  # Most rows carry a [MASK] (a short last chunk of a document may draw no span, and 10%
  # of the spans get random tokens instead).
  assert (batch['input_ids'] == tok.mask_id).any(axis=1).mean() >= 0.5
  assert not (batch['targets'] == tok.mask_id).any()
  assert (batch['attention_mask'].sum(1) < batch['weights'].sum(1)).any()  # spans -> one mask


@pytest.mark.parametrize('prefix', [False, True])
def test_span_corruption_on_a_decoder_is_one_sequence(tok, documents, prefix):
  """T5 Table 2's decoder-only rows: corrupted inputs then targets in one sequence, the loss on
  the targets only; the prefix LM also gets the inputs' length as its prefix."""
  config = _config('span_corruption').unlock()
  config.objective.bidirectional_inputs = prefix
  objective = _objective(config, arch='decoder')
  batch = next(iter(pipeline.make_train_dataset(config, objective, tok, documents,
                                                batch_size=4)))
  _, targets_len = objective.lengths(SEQ_LEN)
  assert batch['input_ids'].shape == (4, SEQ_LEN + targets_len - 1)
  assert ('prefix_len' in batch) == prefix
  first_target = (batch['weights'] > 0).argmax(1)
  assert (batch['targets'][np.arange(4), first_target] == tok.vocab_size + 99).all()
  if prefix:
    np.testing.assert_array_equal(batch['prefix_len'] - 1, first_target)


def test_prefix_lm_on_an_encoder_decoder_splits_the_window(tok, documents):
  batch = next(iter(_ds(_config('prefix_lm'), tok, documents, batch_size=4)))
  assert set(batch) == SEQ2SEQ_KEYS
  for row in range(4):
    source = batch['input_ids'][row][batch['attention_mask'][row] > 0]
    target = batch['targets'][row][batch['weights'][row] > 0]
    assert source[-1] == target[-1] == tok.eos_id
    assert len(source) + len(target) <= SEQ_LEN


def test_unknown_objective(tok, documents):
  with pytest.raises(ValueError, match='objective'):
    _ds(_config('span'), tok, documents, batch_size=8)


@pytest.mark.parametrize('objective', ['mlm_nsp', 'clm'])
def test_deterministic_given_seed(objective, tok, documents):
  make = lambda seed: _take(iter(_ds(
      _config(objective, seed=seed), tok, documents, batch_size=8)), 3)
  _assert_batches_equal(make(0), make(0))
  assert not np.array_equal(make(0)[0]['input_ids'], make(1)[0]['input_ids'])


@pytest.mark.parametrize('objective', ['mlm_nsp', 'clm'])
def test_resume_gives_the_same_batches(objective, tok, documents):
  config = _config(objective)
  iterator = iter(_ds(config, tok, documents, batch_size=8))
  _take(iterator, 3)
  state = json.loads(json.dumps(iterator.get_state()))  # as saved by orbax JsonSave
  expected = _take(iterator, 2)
  fresh = iter(_ds(config, tok, documents, batch_size=8))
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 2), expected)


def test_reshuffled_and_remasked_each_epoch(tok, documents):
  num_examples = len(_examples(_config(), tok, documents))
  iterator = iter(_ds(_config(), tok, documents, batch_size=1))
  epochs = [_take(iterator, num_examples) for _ in range(2)]
  rows = [[_unmasked_rows(b)[0] for b in epoch] for epoch in epochs]
  assert sorted(rows[0]) == sorted(rows[1])  # every example once per epoch
  assert rows[0] != rows[1]  # in a new order
  masks = [{row: tuple(b['mlm_weights'][0]) for row, b in zip(r, e)}
           for r, e in zip(rows, epochs)]
  changed = np.mean([masks[0][row] != masks[1][row] for row in masks[0]])
  assert changed > 0.8  # dynamic masking (RoBERTa Sec 4.1)


def test_shards_partition_the_global_stream(tok, documents):
  config = _config()
  global_batches = _take(iter(_ds(
      config, tok, documents, batch_size=8)), 3)
  shards = [_take(iter(_ds(
      config, tok, documents, batch_size=4, shard_index=i, shard_count=2)), 3)
            for i in range(2)]
  for k, global_batch in enumerate(global_batches):
    for key in global_batch:
      # Rows 0, 2, 4, 6 of the global batch are shard 0's, rows 1, 3, 5, 7
      # shard 1's, masks included.
      for i in range(2):
        np.testing.assert_array_equal(global_batch[key][i::2], shards[i][k][key])
  # Over one epoch the two shards see disjoint examples that cover the corpus.
  num_examples = len(_examples(config, tok, documents))
  seen = []
  for i in range(2):
    it = iter(_ds(config, tok, documents, batch_size=1,
                                          shard_index=i, shard_count=2))
    seen.append({_unmasked_rows(b)[0] for b in _take(it, (num_examples - i + 1) // 2)})
  assert not seen[0] & seen[1]
  assert len(seen[0] | seen[1]) == num_examples


@pytest.mark.parametrize('objective', ['mlm_nsp', 'mlm', 'clm'])
def test_eval_batches(objective, tok, documents):
  config = _config(objective)
  num_examples = len(_examples(config, tok, documents))
  batches = _eval(config, tok, documents, batch_size=16,
                                       max_batches=1000)
  _assert_batches_equal(batches, _eval(
      config, tok, documents, batch_size=16, max_batches=1000))
  assert len(batches) == -(-num_examples // 16)
  assert set(batches[0]) == (CLM_KEYS if objective == 'clm' else BERT_KEYS)
  last, padding = batches[-1], 16 * len(batches) - num_examples
  assert padding > 0  # the fixture's sizes exercise the padded final batch
  weights = last['weights' if objective == 'clm' else 'mlm_weights']
  assert weights.shape[0] == 16
  assert (weights[16 - padding:] == 0).all() and (weights[:16 - padding].sum(1) > 0).all()
  if objective != 'clm':
    nsp_weight = float(objective == 'mlm_nsp')
    assert (last['nsp_weights'] == [nsp_weight] * (16 - padding) + [0] * padding).all()
  # In corpus order: the first example starts the first document.
  first_doc = [t for line in tok.encode_batch(documents[0]) for t in line]
  first_row = _unmasked_rows(batches[0])[0]
  if objective == 'clm':
    assert list(first_row) == first_doc[:SEQ_LEN]
  elif objective == 'mlm':
    assert list(first_row[1:SEQ_LEN - 1]) == first_doc[:SEQ_LEN - 2]
  assert len(_eval(config, tok, documents, batch_size=16,
                                        max_batches=2)) == 2


def test_austen_end_to_end(tmp_path):
  config = _config('mlm_nsp', max_seq_len=128)
  train_docs, eval_docs = corpus.load_corpora(config)
  tok = tokenizer_lib.load_or_train(
      tmp_path / 'tokenizer.model',
      lambda: (line for doc in train_docs for line in doc), 1000, 'bpe',
      200_000)  # BPE: at small vocabularies it trains ~10x faster than unigram
  start = time.perf_counter()
  examples = _examples(config, tok, train_docs)
  assert time.perf_counter() - start < 10
  # ~1M tokens in ~125-token pairs.
  assert 6000 < len(examples) < 12000
  assert abs(np.mean([e['nsp_labels'] for e in examples]) - 0.5) < 0.03
  batch = next(iter(_ds(config, tok, train_docs, batch_size=4)))
  assert batch['input_ids'].shape == (4, 128)
  baseline = pipeline.unigram_baseline(tok, train_docs, eval_docs)
  assert 1 < baseline['unigram_perplexity'] < 1000
  assert np.isclose(np.exp(baseline['unigram_cross_entropy']), baseline['unigram_perplexity'])
  assert 0.02 < baseline['most_frequent_token_accuracy'] < 0.2
  assert baseline['most_frequent_token'] in (',', '.', '▁the')
