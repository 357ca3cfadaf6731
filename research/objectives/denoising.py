"""BART's document noises: corrupt a document, reconstruct the original.

Lewis et al. 2020, Sec 2.2: token masking (BERT-style [MASK]), token deletion,
text infilling (spans with Poisson(lambda=3) lengths each replaced by ONE
mask; 0-length spans insert a mask), sentence permutation and document
rotation. The decoder's target is always the uncorrupted document.

Semantics follow fairseq's `fairseq/data/denoising_dataset.py`
(`DenoisingDataset`): every function takes and returns a 1-D int array that
begins with BOS and ends with EOS and never touches those two; masking and
infilling are `add_whole_word_mask` (counts in words when a word-start table
is given, spans may overlap as in fairseq), `replace_length` 1 / 0 / -1
replaces a span by one mask / deletes it / masks every token, inserted masks
are `add_insertion_noise`, and `add_noise` applies the noises in
`__getitem__`'s order: permute sentences, mask (or delete, or infill), insert,
rotate. Random replacements are drawn uniformly from the vocabulary minus
`special_ids` (fairseq excludes only id 0), as `mlm.mask_tokens` does.

Token lookup tables (`is_word_start`, `is_sentence_end`) are bool [vocab_size]
indexed by token id, like fairseq's `mask_whole_words`, so they stay right
after an earlier noise has moved tokens. Host-side numpy; `rng` is the only
source of randomness.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Application order of fairseq's DenoisingDataset.__getitem__.
NOISES = ('permute', 'masking', 'deletion', 'infilling', 'insert', 'rotate')
_MASKINGS = ('masking', 'deletion', 'infilling')


def _check(tokens: np.ndarray) -> np.ndarray:
  tokens = np.asarray(tokens)
  if tokens.ndim != 1 or tokens.size < 2:
    raise ValueError(f'a document is a 1-D array [BOS, ..., EOS] of at least 2 '
                     f'tokens, got shape {tokens.shape}')
  return tokens


def _lookup(table: np.ndarray, tokens: np.ndarray, name: str) -> np.ndarray:
  """table[tokens] for a bool [vocab_size] table, with a clear error."""
  table = np.asarray(table, dtype=bool)
  if table.ndim != 1 or tokens.max() >= table.size:
    raise ValueError(f'{name} must be a bool [vocab_size] table indexed by token '
                     f'id; got shape {table.shape} for token id {tokens.max()}')
  return table[tokens]


def _random_ids(rng: np.random.Generator, size: int, vocab_size: int,
                special_ids: Sequence[int]) -> np.ndarray:
  """Uniform ids in [0, vocab_size) minus special_ids (as mlm.mask_tokens)."""
  specials = sorted(set(special_ids))
  ids = rng.integers(0, vocab_size - len(specials), size=size)
  for special in specials:  # ascending: step past each special at or below
    ids += ids >= special
  return ids


def _poisson_probs(poisson_lambda: float) -> np.ndarray:
  """P(k) for k = 0, 1, ... up to the first below 1e-7, as fairseq builds it."""
  probs, p = [], math.exp(-poisson_lambda)
  for k in range(128):
    probs.append(p)
    if p < 1e-7:
      break
    p *= poisson_lambda / (k + 1)
  probs = np.asarray(probs)
  return probs / probs.sum()


def _span_lengths(num_to_mask: int, poisson_lambda: float,
                  rng: np.random.Generator) -> np.ndarray:
  """Poisson span lengths (in words) whose total is exactly num_to_mask."""
  probs = _poisson_probs(poisson_lambda)
  lengths = rng.choice(probs.size, size=num_to_mask, p=probs)
  while lengths.sum() < num_to_mask:
    lengths = np.concatenate(
        [lengths, rng.choice(probs.size, size=num_to_mask, p=probs)])
  # Keep the spans up to the one that reaches the budget, trimmed to fit.
  cum = np.cumsum(lengths)
  last = int(np.argmax(cum >= num_to_mask))
  lengths = lengths[:last + 1]
  lengths[last] = num_to_mask - (cum[last - 1] if last > 0 else 0)
  return lengths


def insert_masks(tokens: np.ndarray, rng: np.random.Generator, *,
                 num_inserts: int, mask_id: int, vocab_size: int,
                 random_ratio: float = 0.0,
                 special_ids: Sequence[int] = ()) -> np.ndarray:
  """Inserts num_inserts masks at random inner positions (add_insertion_noise).

  ceil(num_inserts * random_ratio) of them are random tokens instead.
  """
  tokens = _check(tokens)
  if num_inserts <= 0:
    return tokens
  length = tokens.size + num_inserts
  positions = rng.permutation(length - 2)[:num_inserts] + 1  # never 0 or last
  num_random = math.ceil(num_inserts * random_ratio)
  result = np.empty(length, tokens.dtype)
  result[positions[num_random:]] = mask_id
  result[positions[:num_random]] = _random_ids(rng, num_random, vocab_size,
                                               special_ids)
  is_inserted = np.zeros(length, bool)
  is_inserted[positions] = True
  result[~is_inserted] = tokens
  return result


def _mask(tokens: np.ndarray, rng: np.random.Generator, *, mask_ratio: float,
          replace_length: int, poisson_lambda: float | None,
          is_word_start: np.ndarray | None, mask_id: int, vocab_size: int,
          random_ratio: float, special_ids: Sequence[int]) -> np.ndarray:
  """fairseq's add_whole_word_mask; span lengths from Poisson if lambda given."""
  tokens = _check(tokens).copy()
  if replace_length not in (-1, 0, 1):
    raise ValueError(f'replace_length must be -1 (mask every token), 0 (delete) '
                     f'or 1 (one mask per span), got {replace_length}')
  if is_word_start is None:
    word_start = np.ones(tokens.size, np.int64)
  else:
    word_start = _lookup(is_word_start, tokens, 'is_word_start').astype(np.int64)
  word_start[[0, -1]] = 0
  num_to_mask = math.ceil(word_start.sum() * mask_ratio)
  if num_to_mask == 0:
    return tokens
  num_inserts = 0
  if poisson_lambda is not None:
    lengths = _span_lengths(num_to_mask, poisson_lambda, rng)
    num_inserts = int(np.sum(lengths == 0))  # 0-length spans insert a mask
    lengths = lengths[lengths > 0]
    num_to_mask = lengths.size
    if num_to_mask == 0:
      return insert_masks(tokens, rng, num_inserts=num_inserts, mask_id=mask_id,
                          vocab_size=vocab_size, random_ratio=random_ratio,
                          special_ids=special_ids)
  else:
    lengths = np.ones(num_to_mask, np.int64)
  starts = np.flatnonzero(word_start)
  indices = starts[rng.permutation(starts.size)[:num_to_mask]]
  is_random = rng.random(num_to_mask) < random_ratio

  def replace(at: np.ndarray, random: np.ndarray) -> None:
    tokens[at] = mask_id
    tokens[at[random]] = _random_ids(rng, int(random.sum()), vocab_size,
                                     special_ids)

  keep = np.ones(tokens.size, bool)
  if replace_length == 0:
    keep[indices] = False
  else:
    replace(indices, is_random)
  # Grow each span token by token until it has covered `length` words: a
  # span stops before its (length+1)-th word start, and EOS counts as a very
  # long word so no span reaches it.
  word_start[-1] = 255
  remaining = lengths - 1
  while indices.size:
    remaining = remaining - word_start[indices + 1]
    going = remaining >= 0
    indices, is_random, remaining = (indices[going] + 1, is_random[going],
                                     remaining[going])
    if replace_length == -1:
      replace(indices, is_random)
    else:
      keep[indices] = False
  tokens = tokens[keep]
  return insert_masks(tokens, rng, num_inserts=num_inserts, mask_id=mask_id,
                      vocab_size=vocab_size, random_ratio=random_ratio,
                      special_ids=special_ids)


def token_masking(tokens: np.ndarray, rng: np.random.Generator, *,
                  mask_id: int, vocab_size: int, mask_ratio: float = 0.3,
                  random_ratio: float = 0.0,
                  is_word_start: np.ndarray | None = None,
                  special_ids: Sequence[int] = ()) -> np.ndarray:
  """BART's token masking: ceil(mask_ratio * n) tokens (or whole words) -> mask.

  A chosen word of several pieces becomes one mask (replace_length 1); each
  mask is a random token instead with probability random_ratio.
  """
  return _mask(tokens, rng, mask_ratio=mask_ratio, replace_length=1,
               poisson_lambda=None, is_word_start=is_word_start,
               mask_id=mask_id, vocab_size=vocab_size,
               random_ratio=random_ratio, special_ids=special_ids)


def token_deletion(tokens: np.ndarray, rng: np.random.Generator, *,
                   mask_ratio: float = 0.3,
                   is_word_start: np.ndarray | None = None) -> np.ndarray:
  """BART's token deletion: ceil(mask_ratio * n) tokens (or words) removed."""
  return _mask(tokens, rng, mask_ratio=mask_ratio, replace_length=0,
               poisson_lambda=None, is_word_start=is_word_start, mask_id=-1,
               vocab_size=1, random_ratio=0.0, special_ids=())


def text_infilling(tokens: np.ndarray, rng: np.random.Generator, *,
                   mask_id: int, vocab_size: int, mask_ratio: float = 0.3,
                   random_ratio: float = 0.0, poisson_lambda: float = 3.0,
                   replace_length: int = 1,
                   is_word_start: np.ndarray | None = None,
                   special_ids: Sequence[int] = ()) -> np.ndarray:
  """BART's text infilling (fairseq mask_length='span-poisson').

  Span lengths ~ Poisson(poisson_lambda) are drawn until they cover
  ceil(mask_ratio * n) tokens (words), the last one trimmed to the budget;
  each span starts at a random token (word start) and is replaced according to
  replace_length: 1 one mask, 0 deleted, -1 every token masked. A 0-length span
  inserts a mask at a random position, teaching the model how many tokens are
  missing. Spans may overlap, as in fairseq, so at mask_ratio 0.3 about 27% of
  the tokens end up masked (tests/test_noise.py measures it).
  """
  return _mask(tokens, rng, mask_ratio=mask_ratio,
               replace_length=replace_length, poisson_lambda=poisson_lambda,
               is_word_start=is_word_start, mask_id=mask_id,
               vocab_size=vocab_size, random_ratio=random_ratio,
               special_ids=special_ids)


def permute_sentences(tokens: np.ndarray, rng: np.random.Generator, *,
                      is_sentence_end: np.ndarray,
                      permute_ratio: float = 1.0) -> np.ndarray:
  """BART's sentence permutation: shuffle ceil(permute_ratio * k) of k sentences.

  A sentence ends after a sentence-ending token whose predecessor is not one
  (so '. . .' closes a sentence at the first dot), and the token before EOS
  always ends the last sentence.
  """
  tokens = _check(tokens)
  full_stop = _lookup(is_sentence_end, tokens, 'is_sentence_end').copy()
  full_stop[-2] = True
  ends = np.flatnonzero(full_stop[1:] & ~full_stop[:-1]) + 2  # exclusive ends
  num_sentences = ends.size
  if num_sentences < 2:
    return tokens.copy()
  num_to_permute = math.ceil(num_sentences * permute_ratio)
  chosen = rng.permutation(num_sentences)[:num_to_permute]
  order = np.arange(num_sentences)
  order[chosen] = chosen[rng.permutation(num_to_permute)]
  starts = np.concatenate([[1], ends[:-1]])
  result = tokens.copy()  # tokens after the last sentence end stay in place
  result[1:ends[-1]] = np.concatenate([tokens[starts[i]:ends[i]] for i in order])
  return result


def rotate_document(tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """BART's document rotation: the document restarts at a random token.

  As fairseq's add_rolling_noise: offset uniform in [1, n - 1], so the inner
  tokens are rolled by 0..n-2 and "no rotation" is drawn twice as often.
  """
  tokens = _check(tokens)
  offset = int(rng.integers(1, max(1, tokens.size - 1) + 1))
  return np.concatenate([tokens[:1], tokens[offset:-1], tokens[1:offset],
                         tokens[-1:]])


def add_noise(tokens: np.ndarray, rng: np.random.Generator, *,
              noises: Sequence[str], mask_id: int, vocab_size: int,
              mask_ratio: float = 0.3, random_ratio: float = 0.0,
              poisson_lambda: float = 3.0, replace_length: int = 1,
              insert_ratio: float = 0.0, permute_ratio: float = 1.0,
              rotate_ratio: float = 1.0,
              is_word_start: np.ndarray | None = None,
              is_sentence_end: np.ndarray | None = None,
              special_ids: Sequence[int] = ()) -> np.ndarray:
  """The named noises in fairseq's order, whatever order they are named in.

  noises: names from NOISES. At most one of masking / deletion / infilling
    (fairseq has one masking pass); 'insert' adds ceil(insert_ratio * n)
    masks; 'rotate' rotates with probability rotate_ratio (fairseq --rotate).
  The other arguments are those of the single-noise functions.
  """
  unknown = [name for name in noises if name not in NOISES]
  if unknown:
    raise ValueError(f'unknown BART noise {", ".join(map(repr, unknown))}; '
                     f'valid noises: {", ".join(NOISES)}')
  maskings = [name for name in noises if name in _MASKINGS]
  if len(set(maskings)) > 1:
    raise ValueError(f'choose one of {", ".join(_MASKINGS)} (fairseq makes one '
                     f'masking pass), got {", ".join(maskings)}')
  if 'permute' in noises and is_sentence_end is None:
    raise ValueError('noise permute needs is_sentence_end, a bool [vocab_size] '
                     'table of sentence-ending token ids')
  tokens = _check(tokens)
  common = dict(mask_id=mask_id, vocab_size=vocab_size,
                random_ratio=random_ratio, special_ids=special_ids)
  if 'permute' in noises:
    tokens = permute_sentences(tokens, rng, is_sentence_end=is_sentence_end,
                               permute_ratio=permute_ratio)
  if 'masking' in noises:
    tokens = token_masking(tokens, rng, mask_ratio=mask_ratio,
                           is_word_start=is_word_start, **common)
  if 'deletion' in noises:
    tokens = token_deletion(tokens, rng, mask_ratio=mask_ratio,
                            is_word_start=is_word_start)
  if 'infilling' in noises:
    tokens = text_infilling(tokens, rng, mask_ratio=mask_ratio,
                            poisson_lambda=poisson_lambda,
                            replace_length=replace_length,
                            is_word_start=is_word_start, **common)
  if 'insert' in noises:
    tokens = insert_masks(tokens, rng,
                          num_inserts=math.ceil(tokens.size * insert_ratio),
                          **common)
  if 'rotate' in noises and rng.random() < rotate_ratio:
    tokens = rotate_document(tokens, rng)
  return tokens
