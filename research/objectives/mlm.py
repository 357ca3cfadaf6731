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

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from research.objectives import base, nsp


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
    ngram_prob: float = 0.0,
    max_ngram: int = 1,
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
    ngram_prob: > 0: UniLM's n-gram masking (`ngram_positions`); 0: single
      tokens, a uniformly random subset (BERT).
    max_ngram: the longest n-gram (UniLM: 3).

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

  if ngram_prob > 0:
    rows = candidate_mask.reshape(-1, candidate_mask.shape[-1])
    predict = np.stack([
        ngram_positions(row, int(n), rng, ngram_prob=ngram_prob, max_ngram=max_ngram)
        for row, n in zip(rows, num_to_predict.reshape(-1))]).reshape(candidate_mask.shape)
  else:
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


def ngram_positions(candidate_mask: np.ndarray, num_to_predict: int, rng: np.random.Generator,
                    *, ngram_prob: float, max_ngram: int) -> np.ndarray:
  """UniLM v1 (Dong et al. 2019, Sec 2.2): "80% of the time we randomly mask one token each
  time, and 20% of the time we mask a bigram or a trigram". As unilm-v1's loader
  (`skipgram_prb`, `skipgram_size`): candidates are visited in random order; each starts a
  single token or, with probability ngram_prob, an n-gram of n uniform in [2, max_ngram]
  (its candidate positions), until num_to_predict positions are chosen; a random subset of
  num_to_predict is kept if the last n-gram overshoots.

  candidate_mask bool [L] -> bool [L], True at the chosen positions.
  """
  length = candidate_mask.shape[0]
  chosen = np.zeros(length, bool)
  count = 0
  for start in rng.permutation(np.flatnonzero(candidate_mask)):
    if count >= num_to_predict:
      break
    if chosen[start]:
      continue
    n = int(rng.integers(2, max_ngram + 1)) if rng.random() < ngram_prob else 1
    span = np.arange(start, min(start + n, length))
    span = span[candidate_mask[span] & ~chosen[span]]
    chosen[span] = True
    count += len(span)
  if count > num_to_predict:
    keep = rng.choice(np.flatnonzero(chosen), num_to_predict, replace=False)
    chosen[:] = False
    chosen[keep] = True
  return chosen


@dataclasses.dataclass(frozen=True)
class MaskedLM(base.Objective):
  """BERT pretraining (arch='encoder'): MLM on [CLS] A [SEP] B [SEP] examples, plus NSP when
  `nsp` (Sec 3.1 Task #2; without it, BERT Table 5's "No NSP" / RoBERTa's DOC-SENTENCES).

  Batch (padded to L): input_ids, segment_ids, attention_mask int32 [B, L];
  mlm_targets int32 [B, L], mlm_weights float32 [B, L]; nsp_labels int32 [B] (0 IsNext,
  1 NotNext), nsp_weights float32 [B] (1 for real rows with NSP on).
  """
  archs = ('encoder',)
  nsp: bool = True
  mask_prob: float = 0.15
  mask_token_prob: float = 0.8
  random_token_prob: float = 0.1
  max_predictions: int = 20  # logits are computed only at this many positions per row
  # The input may show a predicted token (BERT's unchanged 10%); XLNet's query stream never does.
  copyable_targets: ClassVar[bool] = True
  short_seq_prob: float = 0.1
  # > 0: mask n-grams (ngram_positions; UniLM); BERT masks single tokens.
  ngram_prob: float = 0.0
  max_ngram: int = 1

  @property
  def name(self):
    return 'mlm_nsp' if self.nsp else 'mlm'

  @property
  def loss_terms(self):
    return (('mlm_loss', 'mlm_weights'),) + ((('nsp_loss', 'nsp_weights'),) if self.nsp else ())

  def examples(self, tokenizer, documents_ids, *, seq_len, seed):
    pairs = nsp.make_nsp_examples(
        documents_ids, np.random.default_rng(seed), max_seq_len=seq_len,
        short_seq_prob=self.short_seq_prob, use_nsp=self.nsp)
    return [bert_example(a, b, is_random_next, tokenizer, seq_len)
            for a, b, is_random_next in pairs]

  def __post_init__(self):
    if not 0.0 <= self.ngram_prob <= 1.0 or (self.ngram_prob and self.max_ngram < 2):
      raise ValueError(f'--config.objective.ngram_prob={self.ngram_prob} with max_ngram='
                       f'{self.max_ngram}: use a probability in [0, 1] and, when it is above 0, '
                       'max_ngram >= 2')

  def corruptor(self, tokenizer, *, seq_len):
    is_special = np.zeros(tokenizer.vocab_size, bool)  # lookup table [V]
    is_special[list(tokenizer.special_ids)] = True
    settings = dict(vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
                    mask_prob=self.mask_prob, mask_token_prob=self.mask_token_prob,
                    random_token_prob=self.random_token_prob,
                    max_predictions=self.max_predictions, special_ids=tokenizer.special_ids,
                    ngram_prob=self.ngram_prob, max_ngram=self.max_ngram)
    nsp_weight = np.float32(self.nsp)

    def corrupt(example, rng):
      input_ids = example['input_ids']  # [L]
      masked_ids, targets, weights = mask_tokens(input_ids, ~is_special[input_ids], rng,
                                                 **settings)
      return {**example, 'input_ids': masked_ids, 'mlm_targets': targets,
              'mlm_weights': weights, 'nsp_weights': nsp_weight}
    return corrupt

  def vocab_positions(self, seq_len):
    return min(self.max_predictions, seq_len)

  def mask_inputs(self, batch) -> dict:
    """Encoder mask arguments from the batch (BERT: none, the full mask)."""
    return {}

  def terms(self, model, params, batch, rng):
    # Gather the predicted positions (weight 1 sorts first; top_k is stable) so the
    # vocab-sized projection runs on max_predictions rows instead of every token.
    k = self.vocab_positions(batch['mlm_weights'].shape[1])
    _, positions = jax.lax.top_k(batch['mlm_weights'], k)  # [batch, k]
    take = lambda x: jnp.take_along_axis(x, positions, axis=1)
    out = base.apply(model, params, batch['input_ids'], batch['segment_ids'],
                     batch['attention_mask'], mlm_positions=positions, rng=rng,
                     **self.mask_inputs(batch))
    targets, weights = take(batch['mlm_targets']), take(batch['mlm_weights'])
    terms = base.token_terms('mlm_', out['mlm_logits'], targets, weights)
    if self.copyable_targets:
      # BERT leaves 10% of the predicted tokens unchanged, and copying them is learned first:
      # accuracy where the input hides the target ([MASK] or a random token) is what the
      # context taught (it stays at the most frequent token's rate on a unigram plateau).
      hidden = weights * (take(batch['input_ids']) != targets)
      correct = base.token_correct(out['mlm_logits'], targets)
      terms['mlm_masked_accuracy'] = base.pair(correct * hidden, hidden)
    if self.nsp:
      terms.update(base.token_terms('nsp_', out['nsp_logits'], batch['nsp_labels'],
                                    batch['nsp_weights']))
    return terms

  def summarize(self, values):
    return {**values, 'loss': sum(values[term] for term, _ in self.loss_terms)}


def bert_example(tokens_a, tokens_b, is_random_next, tokenizer, seq_len) -> base.Example:
  """[CLS] A [SEP] B [SEP] (or [CLS] A [SEP]) padded to seq_len (Sec 3)."""
  first = [tokenizer.cls_id, *tokens_a, tokenizer.sep_id]
  second = [*tokens_b, tokenizer.sep_id] if tokens_b else []
  input_ids = np.full(seq_len, tokenizer.pad_id, np.int32)
  input_ids[:len(first) + len(second)] = first + second
  segment_ids = np.zeros(seq_len, np.int32)
  segment_ids[len(first):len(first) + len(second)] = 1
  return {
      'input_ids': input_ids,
      'segment_ids': segment_ids,
      'attention_mask': (input_ids != tokenizer.pad_id).astype(np.int32),
      'nsp_labels': np.int32(is_random_next),
  }
