"""Masked language modelling: BERT's 80/10/10 corruption.

Devlin et al. 2019, Sec 3.1 Task #1 and Appendix A.1: choose 15% of the
WordPiece positions at random; replace a chosen token by [MASK] 80% of the
time, by a random token 10% of the time, and leave it unchanged 10% of the
time; predict the original token at every chosen position. The random and
unchanged cases exist because [MASK] never occurs at fine-tuning time, so the
model must keep a useful representation of every input token.

As in `create_pretraining_data.py`, a sequence with n candidates gets exactly
min(max_predictions, max(1, round(n * mask_prob))) predictions (not a
Bernoulli draw per token), so every example carries signal and fits the
`max_predictions_per_seq` budget. Called once per example per epoch from the
input pipeline, this is RoBERTa's dynamic masking (Liu et al. 2019, Sec 4.1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mask_tokens(
    input_ids: np.ndarray,
    candidate_mask: np.ndarray,
    rng: np.random.Generator,
    *,
    vocab_size: int,
    mask_id: int,
    mask_prob: float,
    mask_token_prob: float,
    random_token_prob: float,
    max_predictions: int,
    special_ids: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Corrupts `input_ids` for MLM.

  Args:
    input_ids: int [..., L] token ids, one example [L] or a batch [B, L].
    candidate_mask: bool [..., L], True where a prediction may be made (real
      tokens that are not [CLS]/[SEP]/padding).
    rng: the only source of randomness.
    vocab_size: random replacements are drawn from [0, vocab_size) ...
    mask_id: id of [MASK].
    mask_prob: fraction of candidates to predict (0.15).
    mask_token_prob: of the predicted positions, the fraction set to [MASK].
    random_token_prob: ... the fraction set to a random token; the remaining
      1 - mask_token_prob - random_token_prob keep their token.
    max_predictions: cap on predictions per sequence.
    special_ids: ... excluding these ids (a random [CLS] or <pad> inside text
      would teach nothing).

  Returns:
    masked_ids: int [..., L], the corrupted input.
    targets: int [..., L], the original id at predicted positions, else 0.
    weights: float32 [..., L], 1.0 at predicted positions, else 0.0.
  """
  input_ids = np.asarray(input_ids)
  candidate_mask = np.asarray(candidate_mask, dtype=bool)
  num_candidates = candidate_mask.sum(axis=-1, keepdims=True)  # [..., 1]
  num_to_predict = np.minimum(
      max_predictions,
      np.maximum(1, np.round(num_candidates * mask_prob).astype(np.int64)))

  # A uniformly random subset of num_to_predict candidates: give candidates a
  # random key (others +inf) and keep the num_to_predict smallest keys.
  keys = np.where(candidate_mask, rng.random(input_ids.shape), np.inf)
  kth_key = np.take_along_axis(
      np.sort(keys, axis=-1), num_to_predict - 1, axis=-1)  # [..., 1]
  predict = (keys <= kth_key) & candidate_mask

  action = rng.random(input_ids.shape)
  to_mask = predict & (action < mask_token_prob)
  to_random = predict & (action >= mask_token_prob) & (
      action < mask_token_prob + random_token_prob)
  # Uniform over non-special ids: draw the index of one, then step it past
  # every special id at or below it (ascending order makes this exact).
  specials = sorted(set(special_ids))
  random_ids = rng.integers(0, vocab_size - len(specials), size=input_ids.shape)
  for special in specials:
    random_ids += random_ids >= special

  masked_ids = np.where(to_mask, mask_id, input_ids)
  masked_ids = np.where(to_random, random_ids, masked_ids).astype(input_ids.dtype)
  targets = np.where(predict, input_ids, 0).astype(input_ids.dtype)
  weights = predict.astype(np.float32)
  return masked_ids, targets, weights
