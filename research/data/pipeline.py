"""Pretraining input pipelines: documents -> examples -> grain batches.

Examples are built once per run (tokenise, then NSP pairs or CLM windows);
everything random after that is a pure function of (config.data.seed, position
in the stream), so a run resumed from `iterator.get_state()` sees exactly the
batches it would have seen:

    source -> shuffle (reseeded each epoch) -> repeat -> random_map (MLM masks)
           -> shard -> batch -> to_iter_dataset

Batches are dicts of numpy arrays; train and eval use the same keys.
  BERT ('mlm_nsp', 'mlm'), [CLS] A [SEP] B [SEP] padded to L:
    input_ids int32 [B, L]       after 80/10/10 masking
    segment_ids int32 [B, L]     0 for [CLS] A [SEP] and padding, 1 for B [SEP]
    attention_mask int32 [B, L]  1 for real tokens
    mlm_targets int32 [B, L], mlm_weights float32 [B, L]
    nsp_labels int32 [B]         0 IsNext, 1 NotNext (0 with NSP off)
    nsp_weights float32 [B]      1 for real rows with NSP on, else 0
  GPT ('clm'):
    input_ids int32 [B, L], targets int32 [B, L], weights float32 [B, L]
Eval batches pad their last batch with all-zero rows (weights 0).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import grain
import numpy as np

from research.data.corpus import Document
from research.data.tokenizer import Tokenizer
from research.objectives import clm, mlm, nsp

Batch = dict[str, np.ndarray]
Example = dict[str, np.ndarray]

OBJECTIVES = ('mlm_nsp', 'mlm', 'clm')

# Examples live in memory and masking one is ~0.1 ms of numpy, so a single
# worker thread keeps a few batches ahead of the jitted step (which releases
# the GIL) without fighting it for the host's cores.
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)


def tokenize_documents(tokenizer: Tokenizer,
                       documents: Sequence[Document]) -> list[list[list[int]]]:
  """Documents of lines -> documents of lines of token ids (one C++ batch)."""
  ids = tokenizer.encode_batch([line for doc in documents for line in doc])
  out, start = [], 0
  for doc in documents:
    out.append(ids[start:start + len(doc)])
    start += len(doc)
  return out


def make_examples(config, tokenizer: Tokenizer,
                  documents: Sequence[Document]) -> list[Example]:
  """Unmasked examples of one corpus, deterministic given config.data.seed."""
  name = config.objective.name
  if name not in OBJECTIVES:
    raise ValueError(f'unknown config.objective.name {name!r}; expected one of {OBJECTIVES}.')
  documents_ids = tokenize_documents(tokenizer, documents)
  seq_len = config.data.max_seq_len
  if name == 'clm':
    windows = clm.pack_documents(
        [[t for line in doc for t in line] for doc in documents_ids],
        tokenizer.eos_id, seq_len)  # [N, L + 1]
    return [clm.clm_batch(w) for w in windows]
  pairs = nsp.make_nsp_examples(
      documents_ids, np.random.default_rng(config.data.seed),
      max_seq_len=seq_len, short_seq_prob=config.objective.short_seq_prob,
      use_nsp=name == 'mlm_nsp')
  return [_bert_example(a, b, is_random_next, tokenizer, seq_len)
          for a, b, is_random_next in pairs]


def _bert_example(tokens_a, tokens_b, is_random_next, tokenizer,
                  seq_len) -> Example:
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


def _mask_example(example: Example, rng: np.random.Generator, *,
                  is_special: np.ndarray, nsp_weight: float,
                  **mask_kwargs) -> Example:
  """Adds MLM corruption and the NSP weight to one BERT example."""
  input_ids = example['input_ids']  # [L]
  masked_ids, targets, weights = mlm.mask_tokens(
      input_ids, ~is_special[input_ids], rng, **mask_kwargs)
  return {
      **example,
      'input_ids': masked_ids,
      'mlm_targets': targets,
      'mlm_weights': weights,
      'nsp_weights': np.float32(nsp_weight),
  }


def _seeded_examples(config, tokenizer, documents) -> grain.MapDataset:
  examples = make_examples(config, tokenizer, documents)
  if not examples:
    raise ValueError(
        f'no {config.objective.name} examples: too little text for one'
        f' sequence of {config.data.max_seq_len} tokens; use a bigger corpus'
        ' or a smaller --config.data.max_seq_len.')
  # One pipeline seed; grain derives distinct seeds for shuffle and masking.
  return grain.MapDataset.source(examples).seed(config.data.seed)


def _maybe_mask(ds: grain.MapDataset, config, tokenizer) -> grain.MapDataset:
  if config.objective.name == 'clm':
    return ds
  objective = config.objective
  is_special = np.zeros(tokenizer.vocab_size, bool)  # lookup table [V]
  is_special[list(tokenizer.special_ids)] = True
  # Plain values, not ConfigDict lookups, in the per-example hot path.
  return ds.random_map(functools.partial(
      _mask_example, is_special=is_special,
      nsp_weight=float(objective.name == 'mlm_nsp'),
      vocab_size=tokenizer.vocab_size, mask_id=tokenizer.mask_id,
      mask_prob=objective.mask_prob,
      mask_token_prob=objective.mask_token_prob,
      random_token_prob=objective.random_token_prob,
      max_predictions=objective.max_predictions_per_seq,
      special_ids=tokenizer.special_ids))


def make_train_dataset(config, tokenizer: Tokenizer,
                       train_docs: Sequence[Document], *, batch_size: int,
                       shard_index: int = 0,
                       shard_count: int = 1) -> grain.IterDataset:
  """Infinite, shuffled, sharded, resumable batches for one process.

  Masks are drawn in `random_map` *before* sharding, so each example's mask
  is keyed by its position in the global stream: shards never share random
  streams, and the union of the shards' k-th batches equals the k-th batch of
  a single process with batch size `batch_size * shard_count`.

  Args:
    config: reads config.data.{max_seq_len, seed} and config.objective.
    tokenizer: as returned by tokenizer.load_or_train.
    train_docs: training documents from corpus.load_corpora.
    batch_size: per-process batch size.
    shard_index: this process (jax.process_index()).
    shard_count: number of processes (jax.process_count()).

  Returns:
    A grain IterDataset; `iter()` of it gives an iterator with JSON-able
    `get_state()` / `set_state()`.
  """
  ds = _seeded_examples(config, tokenizer, train_docs)
  ds = ds.shuffle().repeat()  # a new order each epoch (reseed_each_epoch)
  ds = _maybe_mask(ds, config, tokenizer)  # new masks each epoch: dynamic MLM
  ds = ds[shard_index::shard_count]
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.to_iter_dataset(_READ_OPTIONS)


def make_eval_batches(config, tokenizer: Tokenizer,
                      eval_docs: Sequence[Document], *, batch_size: int,
                      max_batches: int) -> list[Batch]:
  """The first `max_batches` batches of held-out examples, in corpus order.

  Masks and NSP pairs are fixed by config.data.seed, so every evaluation of a
  run (and of runs with the same seed) scores the same predictions. The last
  batch is padded to `batch_size` with all-zero rows, whose weights are 0.
  """
  ds = _maybe_mask(_seeded_examples(config, tokenizer, eval_docs), config,
                   tokenizer)
  ds = ds.batch(batch_size)
  return [_pad_rows(ds[i], batch_size) for i in range(min(len(ds), max_batches))]


def _pad_rows(batch: Batch, batch_size: int) -> Batch:
  return {
      k: np.pad(v, [(0, batch_size - len(v))] + [(0, 0)] * (v.ndim - 1))
      for k, v in batch.items()
  }


def unigram_baseline(tokenizer: Tokenizer, train_docs: Sequence[Document],
                     eval_docs: Sequence[Document]) -> dict[str, float | int | str]:
  """What a model that ignores context scores on the held-out text.

  A unigram model (token frequencies on the training text, add-one smoothed
  over the vocabulary) gives the cross-entropy any LM must beat; always
  predicting the most frequent token gives the MLM accuracy floor, since
  masked positions are uniform over text tokens. Both are over text tokens
  (no [CLS]/[SEP]/EOS).
  """
  def flat_ids(documents):
    ids = tokenizer.encode_batch([line for doc in documents for line in doc])
    return np.fromiter((t for line in ids for t in line), dtype=np.int64)

  counts = np.bincount(flat_ids(train_docs), minlength=tokenizer.vocab_size)
  log_probs = np.log(counts + 1.0) - np.log(counts.sum() + tokenizer.vocab_size)
  eval_ids = flat_ids(eval_docs)
  cross_entropy = float(-log_probs[eval_ids].mean())
  most_frequent = int(counts.argmax())
  return {
      'unigram_cross_entropy': cross_entropy,  # nats per token
      'unigram_perplexity': float(np.exp(cross_entropy)),
      'most_frequent_token_accuracy': float((eval_ids == most_frequent).mean()),
      'most_frequent_token': tokenizer.id_to_piece(most_frequent),
      'eval_tokens': int(len(eval_ids)),
  }
