"""T5 span corruption: drop random spans, predict them after sentinels.

Raffel et al. 2020, Sec 3.1.4 and 3.3.4: corrupt 15% of the tokens in spans
of mean length 3; in the input every dropped span becomes one sentinel, and
the target lists each sentinel followed by the span it stands for:

  tokens   Thank you for inviting me to your party last week .
  inputs   Thank you <X> me to your party <Y> week . </s>
  targets  <X> for inviting <Y> last <Z> </s>

(the paper's Figure 2; t5's random masks always end in a noise span, so in
training the targets never end with a lone sentinel such as <Z>).

This module follows `t5/data/preprocessors.py` (text-to-text-transfer-
transformer): `random_spans_helper` sizes the raw example so the inputs come
out at exactly the model's length, `random_spans_noise_mask` draws the spans,
`noise_span_to_unique_sentinel` / `nonnoise_span_to_unique_sentinel` build the
inputs and targets, and sentinels are the last ids of the vocabulary counting
down (vocab_size - 1 first). As in t5's pipeline (seqio appends EOS after
`denoise`), EOS ends both sequences. Host-side numpy; `rng` is the only source
of randomness.
"""

from __future__ import annotations

import numpy as np


def random_spans_helper(
    inputs_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
  """Raw tokens per example and target length that make inputs unpadded.

  Each noise span costs `extra_tokens_per_span_inputs` sentinels in the inputs
  and each non-noise span `extra_tokens_per_span_targets` in the targets; both
  lengths count the EOS that is appended. Example: inputs_length 512 at
  density 0.15, mean span 3 -> 568 raw tokens (483 kept + 28 sentinels + EOS)
  and 114 targets (85 noise + 28 sentinels + EOS).

  Returns:
    tokens_length: raw tokens to feed `span_corruption` (EOS not included).
    targets_length: length of its targets, EOS included.
  """
  def lengths(tokens_length: int) -> tuple[int, int]:
    num_noise = int(round(tokens_length * noise_density))
    num_spans = int(round(num_noise / mean_noise_span_length))
    return (tokens_length - num_noise + num_spans * extra_tokens_per_span_inputs
            + 1, num_noise + num_spans * extra_tokens_per_span_targets + 1)

  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  _, targets_length = lengths(tokens_length)
  # t5's "minor hack": at density 0.5 (a nice round inputs_length) targets
  # would be one longer than inputs; give up one raw token to match.
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def _random_segmentation(num_items: int, num_segments: int,
                         rng: np.random.Generator) -> np.ndarray:
  """Lengths of a uniformly random split of num_items into non-empty parts.

  Choosing which num_segments - 1 of the num_items - 1 gaps start a new part
  makes every composition equally likely.
  """
  first_in_segment = np.zeros(num_items, np.int64)
  gaps = rng.permutation(num_items - 1) < num_segments - 1  # [num_items - 1]
  first_in_segment[1:] = gaps
  segment_id = np.cumsum(first_in_segment)  # [num_items]
  return np.bincount(segment_id, minlength=num_segments)  # [num_segments]


def random_spans_noise_mask(length: int, noise_density: float,
                            mean_noise_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
  """bool [length]: spans of noise among spans of non-noise, as t5's.

  num_noise_tokens = round(length * noise_density), kept in [1, length - 1];
  num_noise_spans = round(num_noise_tokens / mean_noise_span_length), at
  least 1; the same number of non-noise spans. Spans alternate starting with
  non-noise (so the mask always ends in noise); given these counts every mask
  is equally likely. The arithmetic is float32 with round-half-to-even, as
  t5's TensorFlow ops, so the counts match t5's at every length.
  """
  orig_length = length
  length = max(length, 2)  # t5: avoid degenerate masks, then trim
  num_noise = int(np.round(np.float32(length) * np.float32(noise_density)))
  num_noise = min(max(num_noise, 1), length - 1)
  num_spans = int(np.round(
      np.float32(num_noise) / np.float32(mean_noise_span_length)))
  num_spans = max(num_spans, 1)
  noise_lengths = _random_segmentation(num_noise, num_spans, rng)
  nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, rng)
  interleaved = np.stack([nonnoise_lengths, noise_lengths], 1).reshape(-1)
  span_starts = np.cumsum(interleaved)[:-1]  # [2 * num_spans - 1]
  span_start_indicator = np.zeros(length, np.int64)
  span_start_indicator[span_starts] = 1
  is_noise = np.cumsum(span_start_indicator) % 2 == 1  # [length]
  return is_noise[:orig_length]


def noise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray,
                                  *, vocab_size: int) -> np.ndarray:
  """Each run of noise tokens becomes one sentinel: vocab_size - 1, - 2, ..."""
  tokens = np.asarray(tokens)
  prev_is_noise = np.concatenate([[False], noise_mask[:-1]])
  first_noise = noise_mask & ~prev_is_noise
  sentinels = vocab_size - np.cumsum(first_noise)  # [length]
  out = np.where(first_noise, sentinels, tokens).astype(tokens.dtype)
  return out[~(noise_mask & prev_is_noise)]


def nonnoise_span_to_unique_sentinel(tokens: np.ndarray,
                                     noise_mask: np.ndarray, *,
                                     vocab_size: int) -> np.ndarray:
  """The targets: each run of kept tokens becomes one sentinel."""
  return noise_span_to_unique_sentinel(
      tokens, ~np.asarray(noise_mask), vocab_size=vocab_size)


def span_corruption(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    vocab_size: int,
    eos_id: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
  """T5's pretraining example from one run of raw tokens.

  Args:
    tokens: int [length] without EOS; length `random_spans_helper(...)[0]`
      gives inputs and targets of exactly the helper's lengths.
    rng: the only source of randomness.
    vocab_size: sentinels are vocab_size - 1, vocab_size - 2, ...: the
      tokenizer must reserve the top ids (T5's 100 extra_ids) so no text token
      is mistaken for one.
    eos_id: appended to inputs and targets.
    noise_density: fraction of tokens dropped (0.15).
    mean_noise_span_length: mean length of a dropped span (3).

  Returns:
    inputs: int [length - num_noise + num_spans + 1], kept tokens with one
      sentinel per dropped span, then EOS.
    targets: int [num_noise + num_spans + 1], each sentinel followed by its
      span, then EOS.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 1 or tokens.size == 0:
    raise ValueError(f'span_corruption needs a non-empty 1-D token array, got '
                     f'shape {tokens.shape}')
  noise_mask = random_spans_noise_mask(
      tokens.size, noise_density, mean_noise_span_length, rng)
  num_spans = int(np.sum(noise_mask & ~np.concatenate([[False],
                                                        noise_mask[:-1]])))
  if tokens.max() >= vocab_size - num_spans:
    raise ValueError(
        f'token id {tokens.max()} collides with the sentinels '
        f'{vocab_size - num_spans}..{vocab_size - 1}; reserve the top ids of '
        f'the vocabulary for sentinels (T5 reserves 100)')
  eos = np.array([eos_id], tokens.dtype)
  inputs = noise_span_to_unique_sentinel(tokens, noise_mask,
                                         vocab_size=vocab_size)
  targets = nonnoise_span_to_unique_sentinel(tokens, noise_mask,
                                             vocab_size=vocab_size)
  return np.concatenate([inputs, eos]), np.concatenate([targets, eos])


def undo_span_corruption(inputs: np.ndarray, targets: np.ndarray, *,
                         vocab_size: int, eos_id: int) -> np.ndarray:
  """The original tokens from `span_corruption`'s inputs and targets.

  Sentinels are recognised in order (vocab_size - 1, then - 2, ...), which is
  unambiguous because `span_corruption` refuses text ids in their range. A
  target sentinel with no partner in the inputs (t5 emits one for the kept
  span of a length-1 example) stands for nothing and is skipped.
  """
  def split(seq: np.ndarray) -> list[list[int]]:
    """[before the first sentinel, after sentinel 1, after sentinel 2, ...]."""
    seq = list(np.asarray(seq))
    if seq and seq[-1] == eos_id:
      seq = seq[:-1]
    parts, expected = [[]], vocab_size - 1
    for token in seq:
      if token == expected:
        parts.append([])
        expected -= 1
      else:
        parts[-1].append(token)
    return parts

  kept, dropped = split(inputs), split(targets)
  # Input part k follows sentinel k; its dropped span follows target sentinel k.
  tokens = list(kept[0])
  for k, part in enumerate(kept[1:], start=1):
    tokens += dropped[k] + part
  return np.asarray(tokens, dtype=np.asarray(inputs).dtype)
