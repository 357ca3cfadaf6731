"""T5 span corruption and BART's noises: exact numbers and statistics."""

import collections
import math

import numpy as np
import pytest

from research.objectives import denoising as dn
from research.objectives import span_corruption as sc

# ------------------------------------------------------------------ T5 ----

V, EOS = 32000, 1


@pytest.mark.parametrize('inputs_length, density, expected', [
    (512, 0.15, (568, 114)),  # T5's pretraining shapes
    (128, 0.15, (141, 29)),
    (1024, 0.15, (1137, 229)),
    (512, 0.5, (766, 512)),  # t5's density-0.5 hack: targets == inputs
])
def test_random_spans_helper_numbers(inputs_length, density, expected):
  assert sc.random_spans_helper(inputs_length, density, 3.0) == expected


def test_random_spans_helper_counts_extra_tokens():
  # Two sentinels per span leave room for fewer raw tokens.
  tokens_length, targets_length = sc.random_spans_helper(512, 0.15, 3.0, 2, 2)
  noise = round(tokens_length * 0.15)
  spans = round(noise / 3)
  assert tokens_length - noise + 2 * spans + 1 <= 512
  assert targets_length == noise + 2 * spans + 1
  assert tokens_length < 568


@pytest.mark.parametrize('length', [2, 7, 50, 190, 568])
def test_noise_mask_exact_counts(length):
  rng = np.random.default_rng(length)
  # t5 computes in float32: 190 * 0.15 -> 28.500002 -> 29 (float64 gives 28).
  expected_noise = {2: 1, 7: 1, 50: 8, 190: 29, 568: 85}[length]
  expected_spans = max(1, round(expected_noise / 3))
  for _ in range(50):
    mask = sc.random_spans_noise_mask(length, 0.15, 3.0, rng)
    assert mask.shape == (length,) and mask.dtype == bool
    assert mask.sum() == expected_noise
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    assert starts.sum() == expected_spans
    assert not mask[0] and mask[-1]  # non-noise first, noise last


def test_noise_mask_span_lengths_vary_around_three():
  rng = np.random.default_rng(0)
  lengths = []
  for _ in range(300):
    mask = sc.random_spans_noise_mask(568, 0.15, 3.0, rng)
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    lengths += list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
  assert np.mean(lengths) == pytest.approx(85 / 28)
  assert min(lengths) == 1 and max(lengths) > 10  # random, not all 3


def test_noise_mask_is_uniform_over_allowed_masks():
  # Length 10 at density 0.5, mean 2.5: 5 noise tokens in 2 spans, 5 kept in
  # 2 spans: 4 x 4 = 16 masks, each equally likely.
  rng = np.random.default_rng(0)
  draws = 16000
  counts = collections.Counter(
      sc.random_spans_noise_mask(10, 0.5, 2.5, rng).tobytes()
      for _ in range(draws))
  assert len(counts) == 16
  for count in counts.values():  # binomial sd ~ 31; 5 sd
    assert abs(count - draws / 16) < 155


def test_unique_sentinels_on_the_paper_example():
  #             Thank you for inviting me to your party last week .
  tokens = np.array([10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20])
  mask = np.array([0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0], bool)
  np.testing.assert_array_equal(
      sc.noise_span_to_unique_sentinel(tokens, mask, vocab_size=100),
      [10, 11, 99, 14, 15, 16, 17, 98, 19, 20])
  np.testing.assert_array_equal(
      sc.nonnoise_span_to_unique_sentinel(tokens, mask, vocab_size=100),
      [99, 12, 13, 98, 18, 97])


@pytest.mark.parametrize('inputs_length', [512, 128])
def test_span_corruption_fills_the_helper_lengths(inputs_length):
  tokens_length, targets_length = sc.random_spans_helper(inputs_length, 0.15, 3.0)
  rng = np.random.default_rng(0)
  for _ in range(20):
    tokens = rng.integers(3, 30000, tokens_length).astype(np.int32)
    inputs, targets = sc.span_corruption(tokens, rng, vocab_size=V, eos_id=EOS)
    assert inputs.shape == (inputs_length,) and targets.shape == (targets_length,)
    assert inputs.dtype == targets.dtype == np.int32
    assert inputs[-1] == targets[-1] == EOS
    num_spans = round(round(tokens_length * 0.15) / 3)
    # Sentinels count down from the vocabulary's end, in both sequences.
    sentinels = np.arange(V - 1, V - 1 - num_spans, -1)
    np.testing.assert_array_equal(inputs[inputs >= 30000], sentinels)
    np.testing.assert_array_equal(targets[targets >= 30000], sentinels)
    assert targets[0] == V - 1  # every target starts with the first sentinel


def test_span_corruption_round_trip_and_determinism():
  rng = np.random.default_rng(1)
  for length in [1, 2, 5, 37, 141, 568]:
    tokens = rng.integers(3, 30000, length)
    seed = int(rng.integers(1 << 30))
    inputs, targets = sc.span_corruption(
        tokens, np.random.default_rng(seed), vocab_size=V, eos_id=EOS)
    again = sc.span_corruption(
        tokens, np.random.default_rng(seed), vocab_size=V, eos_id=EOS)
    np.testing.assert_array_equal(inputs, again[0])
    np.testing.assert_array_equal(targets, again[1])
    np.testing.assert_array_equal(
        sc.undo_span_corruption(inputs, targets, vocab_size=V, eos_id=EOS),
        tokens)


def test_span_corruption_rejects_text_ids_in_the_sentinel_range():
  tokens = np.full(100, 5)
  tokens[50] = V - 1
  with pytest.raises(ValueError, match='reserve the top ids'):
    sc.span_corruption(tokens, np.random.default_rng(0), vocab_size=V,
                       eos_id=EOS)


# ---------------------------------------------------------------- BART ----

BOS, PAD, BEOS, MASK, DOT = 0, 1, 2, 3, 4
SPECIALS = (BOS, PAD, BEOS, MASK)
VOCAB = 50000
N = 512  # inner tokens


def _doc(n=N, start=100):
  """[BOS, start, start+1, ..., EOS]: increasing ids make alignment trivial."""
  return np.concatenate([[BOS], np.arange(start, start + n), [BEOS]])


def _runs(out, n=N, start=100):
  """(mask run length, number of original tokens missing) per mask run."""
  inner, prev, run, result = out[1:-1], start - 1, 0, []
  for token in [*inner, start + n]:
    if token == MASK:
      run += 1
      continue
    assert token > prev  # kept tokens stay in order
    if run or token - prev - 1:
      result.append((run, token - prev - 1))
    prev, run = token, 0
  return result


def test_token_masking_exact_count_and_random_ratio():
  rng = np.random.default_rng(0)
  doc, chosen, random = _doc(), 0, 0
  for _ in range(200):
    out = dn.token_masking(doc, rng, mask_id=MASK, vocab_size=VOCAB,
                           mask_ratio=0.15, random_ratio=0.2,
                           special_ids=SPECIALS)
    assert out.shape == doc.shape and out[0] == BOS and out[-1] == BEOS
    changed = out != doc
    # Exactly ceil(15%) chosen; a random id rarely equals the one it replaces.
    assert math.ceil(0.15 * N) - 2 <= changed.sum() <= math.ceil(0.15 * N)
    chosen += math.ceil(0.15 * N)
    random += (changed & (out != MASK)).sum()
    assert not np.isin(out[changed & (out != MASK)], SPECIALS).any()
    assert (out[changed & (out != MASK)] < VOCAB).all()
  assert abs(random / chosen - 0.2) < 0.01  # 15k choices: 3 sd ~ 0.01


def test_token_masking_whole_words():
  is_word_start = np.arange(VOCAB) % 3 == 0  # pieces 3k, 3k+1, 3k+2 = a word
  doc = _doc(n=510, start=300)  # 170 words
  rng = np.random.default_rng(0)
  for _ in range(50):
    out = dn.token_masking(doc, rng, mask_id=MASK, vocab_size=VOCAB,
                           mask_ratio=0.3, is_word_start=is_word_start)
    runs = _runs(out, n=510, start=300)
    # Each chosen word became one mask (its other pieces deleted).
    assert sum(r for r, _ in runs) == math.ceil(0.3 * 170)
    assert all(missing == 3 * r for r, missing in runs)


def test_token_deletion_removes_exactly_the_ratio():
  rng = np.random.default_rng(0)
  doc = _doc()
  for _ in range(50):
    out = dn.token_deletion(doc, rng, mask_ratio=0.3)
    assert out.size == doc.size - math.ceil(0.3 * N)
    assert out[0] == BOS and out[-1] == BEOS
    assert (np.diff(out[1:-1]) > 0).all() and MASK not in out


def _infill_stats(replace_length, draws=400):
  """Masked fraction, tokens per mask, masks inserted between kept tokens.

  Inserted masks land anywhere, a few inside a masked gap, where they count as
  span masks (a small bias of the tokens per mask, downwards).
  """
  rng = np.random.default_rng(0)
  masked = masks = inserts = 0
  for _ in range(draws):
    out = dn.text_infilling(_doc(), rng, mask_id=MASK, vocab_size=VOCAB,
                            mask_ratio=0.3, replace_length=replace_length)
    assert out[0] == BOS and out[-1] == BEOS
    runs = _runs(out)
    assert sum(missing for _, missing in runs) <= math.ceil(0.3 * N)
    for run, missing in runs:
      if replace_length == 1:
        assert run >= 1 or not missing  # a mask wherever tokens are missing
      if replace_length == -1:
        assert run >= missing  # every dropped token became a mask
      masked += missing
      masks += run if missing else 0
      inserts += 0 if missing else run
  return masked / (draws * N), masked / max(masks, 1), inserts / draws


def test_text_infilling_statistics():
  frac, mean_span, inserts = _infill_stats(replace_length=1)
  # fairseq's spans overlap, so ~27% of tokens are masked at mask_ratio 0.3,
  # and merged overlaps make the tokens per mask a little above 3.16, the
  # mean of Poisson(3) given > 0.
  assert 0.25 < frac < 0.29
  assert 3.0 < mean_span < 3.6
  # ~e^-3 of ~49 spans have length 0: ~2.4 inserted masks per document.
  assert 1.5 < inserts < 3.0


@pytest.mark.parametrize('replace_length', [-1, 0])
def test_text_infilling_replace_lengths(replace_length):
  frac, per_mask, inserts = _infill_stats(replace_length, draws=100)
  assert 0.25 < frac < 0.29 and inserts > 1
  if replace_length == 0:
    assert per_mask > 50  # masks only where a 0-length span inserted one
  else:
    assert per_mask < 1  # one mask per token, plus the inserted ones


def test_poisson_span_lengths_meet_the_budget():
  rng = np.random.default_rng(0)
  lengths = [dn._span_lengths(154, 3.0, rng) for _ in range(300)]
  assert all(l.sum() == 154 for l in lengths)
  full = np.concatenate([l[:-1] for l in lengths])  # the last one is trimmed
  assert abs(np.mean(full == 0) - math.exp(-3)) < 0.01
  assert abs(full.mean() - 3.0) < 0.05


def test_insert_masks():
  rng = np.random.default_rng(0)
  out = dn.insert_masks(_doc(), rng, num_inserts=40, mask_id=MASK,
                        vocab_size=VOCAB, random_ratio=0.25,
                        special_ids=SPECIALS)
  assert out.size == N + 2 + 40 and out[0] == BOS and out[-1] == BEOS
  assert (out == MASK).sum() == 30  # ceil(40 * 0.25) = 10 are random ids
  rest = list(out[out != MASK])
  assert len(rest) == N + 2 + 10
  it = iter(rest)  # the document is a subsequence of what is left
  assert all(any(t == u for u in it) for t in _doc())


def test_rotation_keeps_tokens_and_ends():
  doc = _doc(n=10)
  rng = np.random.default_rng(0)
  shifts = collections.Counter()
  for _ in range(11000):
    out = dn.rotate_document(doc, rng)
    assert out[0] == BOS and out[-1] == BEOS
    shift = int(out[1] - 100)
    np.testing.assert_array_equal(out[1:-1], np.roll(doc[1:-1], -shift))
    shifts[shift] += 1
  # fairseq's offset in [1, n-1]: shift 0 comes from two offsets.
  assert abs(shifts[0] - 2000) < 200
  assert all(abs(shifts[k] - 1000) < 150 for k in range(1, 10))


def _sentences(lengths):
  """Sentence s is 100(s+1), 100(s+1)+1, ... (clear of the special ids)."""
  return [100 * (s + 1) + np.arange(n) for s, n in enumerate(lengths)]


def test_sentence_permutation_moves_whole_sentences():
  is_end = np.zeros(VOCAB, bool)
  is_end[DOT] = True
  sentences = [np.append(s, DOT) for s in _sentences([3, 1, 5, 2, 4])]
  doc = np.concatenate([[BOS], *sentences, [BEOS]])
  rng = np.random.default_rng(0)
  orders = set()
  for _ in range(200):
    out = dn.permute_sentences(doc, rng, is_sentence_end=is_end)
    assert out[0] == BOS and out[-1] == BEOS and out.size == doc.size
    pieces = np.split(out[1:-1], np.flatnonzero(out[1:-1] == DOT)[:-1] + 1)
    order = tuple(int(p[0]) // 100 - 1 for p in pieces)
    for s, piece in zip(order, pieces):
      np.testing.assert_array_equal(piece, sentences[s])
    orders.add(order)
  assert len(orders) > 60  # of 120 orders


@pytest.mark.parametrize('doc, swapped', [
    # A run of full stops ends a sentence at its first stop, so the second
    # stop starts the next sentence; the token before EOS closes the last one.
    ((BOS, 50, DOT, DOT, 60, 70, BEOS), (BOS, DOT, 60, 70, 50, DOT, BEOS)),
    # ... unless it follows a full stop: then it stays where it is.
    ((BOS, 50, DOT, 60, DOT, DOT, BEOS), (BOS, 60, DOT, 50, DOT, DOT, BEOS)),
])
def test_sentence_permutation_fairseq_boundaries(doc, swapped):
  is_end = np.zeros(VOCAB, bool)
  is_end[DOT] = True
  outs = {tuple(dn.permute_sentences(np.array(doc), np.random.default_rng(s),
                                     is_sentence_end=is_end))
          for s in range(20)}
  assert outs == {doc, swapped}


def test_add_noise_composes_in_fairseq_order():
  is_end = np.zeros(VOCAB, bool)
  is_end[DOT] = True
  doc = np.concatenate([[BOS], *[np.append(s, DOT) for s in
                                 _sentences([6, 9, 4, 12, 7])], [BEOS]])
  kwargs = dict(mask_id=MASK, vocab_size=VOCAB, is_sentence_end=is_end,
                insert_ratio=0.1, special_ids=SPECIALS)
  names = ('infilling', 'permute', 'rotate', 'insert')
  out = dn.add_noise(doc, np.random.default_rng(7), noises=names, **kwargs)
  assert out[0] == BOS and out[-1] == BEOS and MASK in out
  # The listed order does not matter; the seed decides everything.
  np.testing.assert_array_equal(
      out, dn.add_noise(doc, np.random.default_rng(7), noises=names[::-1],
                        **kwargs))
  assert not np.array_equal(
      out, dn.add_noise(doc, np.random.default_rng(8), noises=names, **kwargs))
  np.testing.assert_array_equal(
      dn.add_noise(doc, np.random.default_rng(0), noises=(), **kwargs), doc)


def test_add_noise_rejects_bad_names():
  with pytest.raises(ValueError, match='valid noises: permute, masking'):
    dn.add_noise(_doc(), np.random.default_rng(0), noises=('infiling',),
                 mask_id=MASK, vocab_size=VOCAB)
  with pytest.raises(ValueError, match='choose one of'):
    dn.add_noise(_doc(), np.random.default_rng(0),
                 noises=('masking', 'infilling'), mask_id=MASK,
                 vocab_size=VOCAB)
  with pytest.raises(ValueError, match='is_sentence_end'):
    dn.add_noise(_doc(), np.random.default_rng(0), noises=('permute',),
                 mask_id=MASK, vocab_size=VOCAB)
  with pytest.raises(ValueError, match='replace_length'):
    dn.text_infilling(_doc(), np.random.default_rng(0), mask_id=MASK,
                      vocab_size=VOCAB, replace_length=2)
