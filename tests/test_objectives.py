"""MLM 80/10/10 masking, NSP pair construction and CLM packing; token metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.objectives import base, clm, mlm, nsp

VOCAB, PAD, CLS, SEP, MASK = 5000, 0, 4, 5, 6
SPECIALS = tuple(range(7))
MLM_KWARGS = dict(vocab_size=VOCAB, mask_id=MASK, mask_prob=0.15,
                  mask_token_prob=0.8, random_token_prob=0.1,
                  special_ids=SPECIALS)


def _bert_batch(rng, batch=4000, length=128):
  """[CLS] text [SEP] text [SEP] <pad>... rows of random lengths."""
  ids = rng.integers(len(SPECIALS), VOCAB, size=(batch, length))
  real = rng.integers(20, length + 1, size=batch)
  ids[:, 0] = CLS
  ids[np.arange(batch), real // 2] = SEP
  ids[np.arange(batch), real - 1] = SEP
  ids[np.arange(length) >= real[:, None]] = PAD
  return ids.astype(np.int32)


def test_mlm_statistics():
  rng = np.random.default_rng(0)
  ids = _bert_batch(rng)
  candidates = ~np.isin(ids, SPECIALS)
  masked, targets, weights = mlm.mask_tokens(
      ids, candidates, rng, max_predictions=1000, **MLM_KWARGS)
  assert masked.shape == targets.shape == weights.shape == ids.shape
  assert masked.dtype == ids.dtype and weights.dtype == np.float32
  chosen = weights > 0
  assert not (chosen & ~candidates).any()  # specials and padding never chosen
  # Exactly round(15%) of each row's candidates (Appendix A.1).
  expected = np.maximum(1, np.round(candidates.sum(1) * 0.15))
  np.testing.assert_array_equal(chosen.sum(1), expected)
  np.testing.assert_array_equal(targets[chosen], ids[chosen])
  assert (targets[~chosen] == 0).all()
  np.testing.assert_array_equal(masked[~chosen], ids[~chosen])
  # 80/10/10 over ~70k chosen tokens: 3 sigma is under 0.5 points.
  n = chosen.sum()
  is_mask = masked[chosen] == MASK
  is_kept = masked[chosen] == ids[chosen]
  is_random = ~is_mask & ~is_kept
  assert abs(is_mask.sum() / n - 0.8) < 0.01
  assert abs(is_random.sum() / n - 0.1) < 0.01
  assert abs(is_kept.sum() / n - 0.1) < 0.01
  random_ids = masked[chosen][is_random]
  assert not np.isin(random_ids, SPECIALS).any() and (random_ids < VOCAB).all()


def test_mlm_random_tokens_cover_all_non_special_ids():
  ids = np.full((1, 20000), 100, np.int32)
  masked, _, _ = mlm.mask_tokens(
      ids, np.ones_like(ids, bool), np.random.default_rng(0), vocab_size=12,
      mask_id=MASK, mask_prob=1.0, mask_token_prob=0.0, random_token_prob=1.0,
      max_predictions=20000, special_ids=SPECIALS)
  assert set(np.unique(masked)) == set(range(7, 12))


def test_mlm_prediction_budget_and_minimum():
  rng = np.random.default_rng(1)
  ids = rng.integers(7, VOCAB, size=(3, 128)).astype(np.int32)
  candidates = np.ones_like(ids, bool)
  candidates[1] = False
  candidates[2, 5:] = False  # 5 candidates: round(0.75) = 1
  candidates[2, :5] = True
  _, _, weights = mlm.mask_tokens(ids, candidates, rng, max_predictions=7,
                                  **MLM_KWARGS)
  assert weights.sum(1).tolist() == [7, 0, 1]


def test_mlm_is_deterministic_given_the_rng_and_works_on_one_example():
  ids = _bert_batch(np.random.default_rng(0), batch=8)
  candidates = ~np.isin(ids, SPECIALS)
  run = lambda seed, x, c: mlm.mask_tokens(
      x, c, np.random.default_rng(seed), max_predictions=20, **MLM_KWARGS)
  for a, b in zip(run(3, ids, candidates), run(3, ids, candidates)):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(run(3, ids, candidates)[2], run(4, ids, candidates)[2])
  masked, targets, weights = run(3, ids[0], candidates[0])
  assert masked.shape == (128,) and 1 <= weights.sum() <= 20


class _CopyingModel:
  """An MLM whose prediction at each position is the token the input shows there."""

  def apply(self, variables, input_ids, segment_ids, attention_mask, *, mlm_positions,
            deterministic, rngs, **mask):
    shown = jnp.take_along_axis(input_ids, mlm_positions, axis=1)  # [batch, P]
    return {'mlm_logits': jax.nn.one_hot(shown, VOCAB), 'nsp_logits': jnp.zeros((1, 2))}


def test_mlm_masked_accuracy_does_not_credit_copying_the_unchanged_tokens():
  ids = _bert_batch(np.random.default_rng(0), batch=64)
  masked, targets, weights = mlm.mask_tokens(ids, ~np.isin(ids, SPECIALS),
                                             np.random.default_rng(1), max_predictions=20,
                                             **MLM_KWARGS)
  batch = {'input_ids': masked, 'segment_ids': np.zeros_like(ids), 'attention_mask': ids > 0,
           'mlm_targets': targets, 'mlm_weights': weights}
  terms = base.means(mlm.MaskedLM(nsp=False).terms(_CopyingModel(), {}, batch, rng=None))
  shown = (masked == targets)[weights > 0].mean()  # ~10% left unchanged
  assert 0.05 < shown < 0.2
  np.testing.assert_allclose(terms['mlm_accuracy'], shown, rtol=1e-5)
  assert terms['mlm_masked_accuracy'] == 0.0


def _documents(rng, num_docs=150):
  """Documents whose token ids are unique and increase through the corpus,
  so any run of ids tells where in which document it came from."""
  documents, next_id = [], 0
  for _ in range(num_docs):
    doc = []
    for _ in range(rng.integers(1, 30)):
      length = int(rng.integers(1, 60))
      doc.append(list(range(next_id, next_id + length)))
      next_id += length
    documents.append(doc)
  doc_of = np.concatenate([[d] * sum(map(len, doc)) for d, doc in enumerate(documents)])
  return documents, doc_of


def test_nsp_pairs():
  rng = np.random.default_rng(0)
  documents, doc_of = _documents(rng)
  examples = nsp.make_nsp_examples(documents, rng, max_seq_len=64,
                                   short_seq_prob=0.1, use_nsp=True)
  assert len(examples) > 1000
  is_random = np.array([r for _, _, r in examples])
  assert abs(is_random.mean() - 0.5) < 0.05
  for a, b, random_next in examples:
    assert len(a) >= 1 and len(b) >= 1 and len(a) + len(b) <= 64 - 3
    # Each side is contiguous text of one document.
    assert np.all(np.diff(a) == 1) and np.all(np.diff(b) == 1)
    if random_next:
      assert doc_of[b[0]] != doc_of[a[0]]
    else:  # B follows A in the same document (truncation may leave a gap).
      assert doc_of[b[0]] == doc_of[a[0]] and b[0] > a[-1]
  # Short sequences (Appendix A.2) exist but are a minority.
  lengths = np.array([len(a) + len(b) for a, b, _ in examples])
  assert 0.02 < (lengths < 40).mean() < 0.3


def test_nsp_is_deterministic_and_handles_one_document():
  documents, _ = _documents(np.random.default_rng(0), num_docs=20)
  make = lambda seed, docs: nsp.make_nsp_examples(
      docs, np.random.default_rng(seed), max_seq_len=64, short_seq_prob=0.1,
      use_nsp=True)
  assert make(1, documents) == make(1, documents)
  assert make(1, documents) != make(2, documents)
  single = make(1, documents[:1])
  assert single and not any(r for _, _, r in single)


def test_no_nsp_gives_full_length_single_segments():
  documents, _ = _documents(np.random.default_rng(0), num_docs=30)
  examples = nsp.make_nsp_examples(documents, np.random.default_rng(0),
                                   max_seq_len=64, short_seq_prob=0.5,
                                   use_nsp=False)
  assert all(b == [] and not r for _, b, r in examples)
  tokens = [t for a, _, _ in examples for t in a]
  assert tokens == [t for doc in documents for seg in doc for t in seg]
  lengths = [len(a) for a, _, _ in examples]
  assert max(lengths) == 62  # [CLS] A [SEP]
  assert sum(n < 62 for n in lengths) <= len(documents)  # only document tails


def test_clm_packing():
  rng = np.random.default_rng(0)
  eos, seq_len = 3, 16
  documents = [list(rng.integers(10, 100, size=n)) for n in (5, 40, 1, 23, 17)]
  windows = clm.pack_documents(documents, eos, seq_len)
  stream = [t for doc in documents for t in (*doc, eos)]
  assert windows.dtype == np.int32
  assert windows.shape == ((len(stream) - 1) // seq_len, seq_len + 1)
  # Windows tile the stream with a one-token overlap; only the tail is lost.
  rebuilt = list(windows[:, :-1].reshape(-1)) + [windows[-1, -1]]
  assert rebuilt == stream[:len(rebuilt)]
  assert len(stream) - len(rebuilt) < seq_len
  assert stream[5] == eos and stream[46] == eos and stream[48] == eos
  batch = clm.clm_batch(windows)
  np.testing.assert_array_equal(batch['input_ids'][:, 1:], batch['targets'][:, :-1])
  np.testing.assert_array_equal(batch['targets'][:-1, -1], batch['input_ids'][1:, 0])
  assert batch['input_ids'].shape == (len(windows), seq_len)
  assert batch['weights'].dtype == np.float32 and (batch['weights'] == 1).all()


@pytest.mark.parametrize('num_tokens,num_windows', [(0, 0), (15, 0), (16, 1)])
def test_clm_packing_of_too_little_text(num_tokens, num_windows):
  windows = clm.pack_documents([list(range(7, 7 + num_tokens))], 3, 16)
  assert windows.shape == (num_windows, 17)  # 16 tokens + EOS fill one window


def test_token_accuracy_is_argmax_accuracy():
  """token_terms counts a position correct iff argmax(logits) == target (no exact ties in
  random logits), weighted; the loss is the weighted cross-entropy."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(3, 7, 50)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 50, (3, 7)))
  targets = targets.at[0, :4].set(jnp.argmax(logits[0, :4], -1))  # some correct ones
  weights = jnp.asarray(rng.integers(0, 2, (3, 7)), jnp.float32)
  terms = base.token_terms('', logits, targets, weights)
  correct = (np.argmax(logits, -1) == targets) * weights
  np.testing.assert_allclose(terms['accuracy'], [correct.sum(), weights.sum()])
  assert terms['accuracy'][0] >= 1
  log_p = jax.nn.log_softmax(logits)
  nll = -np.take_along_axis(np.asarray(log_p), np.asarray(targets)[..., None], -1)[..., 0]
  np.testing.assert_allclose(terms['loss'], [(nll * weights).sum(), weights.sum()], rtol=1e-5)
