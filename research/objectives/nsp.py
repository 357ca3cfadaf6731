"""Next-sentence prediction: BERT's sentence-pair examples.

Devlin et al. 2019, Sec 3.1 Task #2: "when choosing the sentences A and B for
each pretraining example, 50% of the time B is the actual next sentence that
follows A (labeled as IsNext), and 50% of the time it is a random sentence
from the corpus (labeled as NotNext)". A "sentence" is "an arbitrary span of
contiguous text, rather than an actual linguistic sentence" (Sec 3), and
sequences are filled to the length budget, with `short_seq_prob` of them
shorter to reduce the pretrain/fine-tune length mismatch (Appendix A.2).

`make_nsp_examples` follows `create_instances_from_document` of
google-research/bert's `create_pretraining_data.py`, with three changes for
corpora whose lines are paragraphs (Austen) rather than sentences:
  * lines longer than the budget are first cut into budget-sized pieces, so no
    text is lost to truncation of one giant line;
  * the IsNext/NotNext coin is flipped for every chunk; the original forces
    NotNext whenever a chunk holds a single line, which on a paragraph corpus
    pushes NotNext well above 50%. A one-line IsNext chunk is split at a random
    token instead;
  * the short target length is drawn per chunk, not once per document.
Labels are as in the original code: 0 = IsNext, 1 = NotNext (random).

With NSP off, examples are single segments of contiguous text filling the
whole budget within one document: BERT's "No NSP" ablation (Table 5) as
RoBERTa fixed it, i.e. DOC-SENTENCES packing without short sequences (Liu et
al. 2019, Sec 4.2, Table 2), cut at token rather than sentence boundaries.
"""

from __future__ import annotations

import numpy as np

Segment = list[int]
Example = tuple[list[int], list[int], bool]  # (tokens_a, tokens_b, is_random_next)


def make_nsp_examples(
    documents_ids: list[list[Segment]],
    rng: np.random.Generator,
    *,
    max_seq_len: int,
    short_seq_prob: float,
    use_nsp: bool,
) -> list[Example]:
  """Builds (tokens_a, tokens_b, is_random_next) examples from documents.

  Args:
    documents_ids: documents, each a list of segments (lines) of token ids.
    rng: the only source of randomness.
    max_seq_len: length budget including [CLS] A [SEP] B [SEP] (3 specials,
      or 2 for [CLS] A [SEP] when `use_nsp` is False).
    short_seq_prob: probability that a pair aims for a random length in
      [2, budget] instead of the full budget (NSP only).
    use_nsp: False gives one full-length segment per example, tokens_b empty.

  Returns:
    Examples in document order; len(a) + len(b) <= budget always.
  """
  if not use_nsp:
    return _contiguous_examples(documents_ids, max_seq_len - 2)
  max_num_tokens = max_seq_len - 3
  documents = [
      [seg[i:i + max_num_tokens] for seg in doc
       for i in range(0, len(seg), max_num_tokens)]
      for doc in documents_ids]
  documents = [doc for doc in documents if doc]
  examples = []
  for doc_index in range(len(documents)):
    examples.extend(_document_examples(
        documents, doc_index, rng, max_num_tokens, short_seq_prob))
  return examples


def _contiguous_examples(documents_ids, max_num_tokens) -> list[Example]:
  examples = []
  for doc in documents_ids:
    tokens = [t for seg in doc for t in seg]
    examples.extend((tokens[i:i + max_num_tokens], [], False)
                    for i in range(0, len(tokens), max_num_tokens))
  return examples


def _document_examples(documents, doc_index, rng, max_num_tokens,
                       short_seq_prob) -> list[Example]:
  """Pairs from one document: greedy chunks of lines split into A and B."""
  document = documents[doc_index]
  examples = []
  chunk, chunk_len = [], 0
  target_len = _target_length(rng, max_num_tokens, short_seq_prob)
  i = 0
  while i < len(document):
    chunk.append(document[i])
    chunk_len += len(document[i])
    if i == len(document) - 1 or chunk_len >= target_len:
      can_be_next = len(chunk) >= 2 or len(chunk[0]) >= 2
      can_be_random = len(documents) >= 2
      if can_be_next or can_be_random:
        is_random_next = can_be_random and (
            not can_be_next or rng.random() < 0.5)
        if len(chunk) >= 2:
          a_end = int(rng.integers(1, len(chunk)))  # lines in A: 1..len-1
          tokens_a = [t for seg in chunk[:a_end] for t in seg]
          tokens_b = [t for seg in chunk[a_end:] for t in seg]
        else:  # one line: A is all of it, or its head when B is its tail
          cut = (len(chunk[0]) if is_random_next
                 else int(rng.integers(1, len(chunk[0]))))
          tokens_a, tokens_b = chunk[0][:cut], chunk[0][cut:]
        if is_random_next:
          tokens_b = _random_segment(
              documents, doc_index, rng, target_len - len(tokens_a))
          # Lines of this chunk not used as A start the next chunk, as in the
          # original, so that no text of the document is skipped.
          if len(chunk) >= 2:
            i -= len(chunk) - a_end
        tokens_a, tokens_b = _truncate_pair(tokens_a, tokens_b,
                                            max_num_tokens, rng)
        examples.append((tokens_a, tokens_b, bool(is_random_next)))
      chunk, chunk_len = [], 0
      target_len = _target_length(rng, max_num_tokens, short_seq_prob)
    i += 1
  return examples


def _target_length(rng, max_num_tokens, short_seq_prob) -> int:
  if rng.random() < short_seq_prob:
    return int(rng.integers(2, max_num_tokens + 1))
  return max_num_tokens


def _random_segment(documents, doc_index, rng, target_len) -> list[int]:
  """At least `target_len` tokens (or to the end) from another document."""
  other = int(rng.integers(0, len(documents) - 1))
  other += other >= doc_index  # uniform over documents other than doc_index
  document = documents[other]
  tokens = []
  for seg in document[int(rng.integers(0, len(document))):]:
    tokens.extend(seg)
    if len(tokens) >= target_len:
      break
  return tokens


def _truncate_pair(tokens_a, tokens_b, max_num_tokens, rng):
  """Trims the longer side, one token at a time, from a random end.

  Same distribution as the original's per-token coin flips: the number of
  tokens each side loses is fixed by the lengths, and the number of those
  taken from the front is Binomial(n, 1/2).
  """
  len_a, len_b = len(tokens_a), len(tokens_b)
  while len_a + len_b > max_num_tokens:
    if len_a > len_b:
      len_a -= 1
    else:
      len_b -= 1
  trimmed = []
  for tokens, keep in ((tokens_a, len_a), (tokens_b, len_b)):
    front = int(rng.binomial(len(tokens) - keep, 0.5))
    trimmed.append(tokens[front:front + keep])
  return trimmed[0], trimmed[1]
