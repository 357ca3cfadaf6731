"""T5 span corruption and BART's noises: exact numbers and statistics."""

import collections

import numpy as np
import pytest

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
