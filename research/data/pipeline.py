"""Pretraining input pipelines: documents -> examples -> grain batches.

Examples are built once per run (tokenise, then NSP pairs or CLM windows);
everything random after that is a pure function of (config.data.seed, position
in the stream), so a run resumed from `iterator.get_state()` sees exactly the
batches it would have seen:

    source -> shuffle (reseeded each epoch) -> repeat -> random_map (MLM masks)
           -> shard -> batch -> to_iter_dataset

Batches are dicts of numpy arrays, whose keys each objective documents
(research/objectives/: mlm.MaskedLM, clm.CausalLM, seq2seq.SpanCorruption /
Denoising); train and eval use the same keys. Eval batches pad their last batch
with all-zero rows (weights 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from research.data.corpus import Document
from research.data.tokenizer import Tokenizer
from research.objectives import Objective

Batch = dict[str, np.ndarray]
Example = dict[str, np.ndarray]

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


def _seeded_examples(config, objective: Objective, tokenizer,
                     documents: Sequence[Document]) -> grain.MapDataset:
  """The objective's unmasked examples of one corpus, deterministic given config.data.seed."""
  examples = objective.examples(tokenizer, tokenize_documents(tokenizer, documents),
                                seq_len=config.data.max_seq_len, seed=config.data.seed)
  if not examples:
    raise ValueError(
        f'no {objective.name} examples: too little text for one'
        f' sequence of {config.data.max_seq_len} tokens; use a bigger corpus'
        ' or a smaller --config.data.max_seq_len.')
  # One pipeline seed; grain derives distinct seeds for shuffle and masking.
  return grain.MapDataset.source(examples).seed(config.data.seed)


def _corrupt(ds: grain.MapDataset, config, objective: Objective,
             tokenizer) -> grain.MapDataset:
  corrupt = objective.corruptor(tokenizer, seq_len=config.data.max_seq_len)
  return ds if corrupt is None else ds.random_map(corrupt)


def make_train_dataset(config, objective: Objective, tokenizer: Tokenizer,
                       train_docs: Sequence[Document], *, batch_size: int,
                       shard_index: int = 0,
                       shard_count: int = 1) -> grain.IterDataset:
  """Infinite, shuffled, sharded, resumable batches for one process.

  Masks are drawn in `random_map` *before* sharding, so each example's mask
  is keyed by its position in the global stream: shards never share random
  streams, and the union of the shards' k-th batches equals the k-th batch of
  a single process with batch size `batch_size * shard_count`.

  Args:
    config: reads config.data.{max_seq_len, seed}.
    objective: what the examples are for (research/objectives/).
    tokenizer: as returned by tokenizer.load_or_train.
    train_docs: training documents from corpus.load_corpora.
    batch_size: per-process batch size.
    shard_index: this process (jax.process_index()).
    shard_count: number of processes (jax.process_count()).

  Returns:
    A grain IterDataset; `iter()` of it gives an iterator with JSON-able
    `get_state()` / `set_state()`.
  """
  ds = _seeded_examples(config, objective, tokenizer, train_docs)
  ds = ds.shuffle().repeat()  # a new order each epoch (reseed_each_epoch)
  ds = _corrupt(ds, config, objective, tokenizer)  # new noise each epoch: dynamic MLM
  ds = ds[shard_index::shard_count]
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.to_iter_dataset(_READ_OPTIONS)


def make_eval_batches(config, objective: Objective, tokenizer: Tokenizer,
                      eval_docs: Sequence[Document], *, batch_size: int,
                      max_batches: int) -> list[Batch]:
  """The first `max_batches` batches of held-out examples, in corpus order.

  Noise (masks, spans) and NSP pairs are fixed by config.data.seed, so every evaluation of a
  run (and of runs with the same seed) scores the same predictions. The last
  batch is padded to `batch_size` with all-zero rows, whose weights are 0.
  """
  ds = _corrupt(_seeded_examples(config, objective, tokenizer, eval_docs),
                config, objective, tokenizer)
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
