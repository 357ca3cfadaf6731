"""In-context evaluation of a decoder: no gradient step, only the prompt changes.

GPT-3 (Brown et al. 2020, Sec 2, Fig 2.1) evaluates zero-, one- and few-shot: k solved
demonstrations precede the query in the context. Classification and multiple choice compare
the model's likelihood of each candidate completion (Sec 2.4). LAMBADA (Paperno et al. 2016;
GPT-2 Sec 3.3, GPT-3 Sec 3.1.2) asks for the last word of a passage; a prediction counts when
every token of the word is the model's greedy choice.

  score_continuations   log P(continuation | context) and whether it is the greedy output
  classify_by_prompting k-shot sentiment ("Review: ... Sentiment: positive") on the vendored
                        rotten_tomatoes reviews
  last_word_accuracy    LAMBADA-style on held-out corpus documents
  run_incontext_eval    all of them for a trained workdir (`--mode=eval` of a decoder)
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from research import loading, models
from research.data import corpus
from research.tasks.readers import DroppedRows, read_delimited

SENTIMENT_DIR = Path(__file__).parent / 'data' / 'assets' / 'rotten_tomatoes'
SENTIMENT_LABELS = ('negative', 'positive')  # label 0 = rotten, 1 = fresh
_LAST_WORD = re.compile(r"^(.*\S)\s+([A-Za-z]+)[.!?;:,'\"]*$")


@dataclasses.dataclass(frozen=True)
class Score:
  log_prob: float  # sum over the continuation's tokens
  greedy: bool  # every continuation token is the argmax given what precedes it
  num_tokens: int


@functools.partial(jax.jit, static_argnames='model')
def _token_scores(model, params, ids):
  """ids [batch, length] -> log P(ids[:, t+1] | ids[:, :t+1]) and whether it is the argmax,
  both [batch, length - 1]."""
  logits = model.apply({'params': params}, ids).logits[:, :-1].astype(jnp.float32)
  targets = ids[:, 1:, None]
  log_p = jax.nn.log_softmax(logits)  # [batch, length - 1, vocab]
  log_probs = jnp.take_along_axis(log_p, targets, -1)[..., 0]
  # The target is the argmax when its log-probability is the largest (as objectives/base.py
  # counts accuracy, without XLA:CPU's scalar argmax reduction).
  return log_probs, log_probs >= log_p.max(-1)


def score_continuations(model, params, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                        max_context: int | None = None, batch_size: int = 16) -> list[Score]:
  """Scores (context ids, continuation ids) pairs in right-padded batches.

  Contexts longer than `max_context` (default: the position table) minus the continuation
  lose their oldest tokens. Lengths are padded to a power of two, so few shapes compile.
  """
  window = min(max_context or model.cfg.max_len, model.cfg.max_len)
  rows = []
  for context, continuation in pairs:
    if not 0 < len(continuation) < window or not context:
      raise ValueError(f'need a non-empty context and a continuation of 1..{window - 1} tokens, '
                       f'got {len(context)} and {len(continuation)}')
    rows.append((list(context)[-(window - len(continuation)):], list(continuation)))
  scores = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start:start + batch_size]
    longest = max(len(c) + len(x) for c, x in chunk)
    length = min(window, max(16, 1 << (longest - 1).bit_length()))
    ids = np.zeros((batch_size, length), np.int32)  # pad rows too: one shape per length
    for row, (context, continuation) in enumerate(chunk):
      ids[row, :len(context) + len(continuation)] = context + continuation
    log_probs, greedy = jax.device_get(_token_scores(model, params, ids))
    for row, (context, continuation) in enumerate(chunk):
      # Token i of the sequence is predicted at position i - 1.
      span = slice(len(context) - 1, len(context) + len(continuation) - 1)
      scores.append(Score(float(log_probs[row, span].sum()), bool(greedy[row, span].all()),
                          len(continuation)))
  return scores


def read_sentiment(split: str,
                   directory: str | os.PathLike = SENTIMENT_DIR) -> list[tuple[str, int]]:
  """(review, label) pairs of the rotten_tomatoes `split` (train/dev/test, .tsv or .tsv.gz)."""
  for name in (f'{split}.tsv', f'{split}.tsv.gz'):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      rows = read_delimited(path, DroppedRows(strict=True))  # vendored data: clean
      return [(r['sentence'], int(r['label'])) for r in rows]
  raise FileNotFoundError(f'no {split}.tsv(.gz) in {directory}; pass the rotten_tomatoes '
                          'directory (sentence<TAB>label files)')


def sentiment_prompt(review: str, label: int | None = None) -> str:
  """GPT-3-style task format (Sec 2, Fig 2.1): the answer follows 'Sentiment:'."""
  answer = '' if label is None else f' {SENTIMENT_LABELS[label]}'
  return f'Review: {review}\nSentiment:{answer}'


def classify_by_prompting(model, params, tokenizer, examples: Sequence[tuple[str, int]],
                          demonstrations: Sequence[tuple[str, int]], k: int, *, seed: int = 0,
                          max_context: int | None = None,
                          max_demo_words: int = 16) -> dict[str, float]:
  """k-shot accuracy: each query gets k random demonstrations (short ones, so that k fit in a
  small model's context) and the label whose word is likelier wins.

  Also reported: the same with contextual calibration (Zhao et al. 2021, Sec 5): each label's
  log-probability minus its log-probability for the content-free review "N/A" under the same
  demonstrations, which removes a small model's prior for one label word.
  """
  rng = np.random.default_rng(seed)
  pool = [d for d in demonstrations if len(d[0].split()) <= max_demo_words]
  choices = [tokenizer.encode(f' {label}') for label in SENTIMENT_LABELS]
  pairs = []
  for review, _ in examples:
    demos = [pool[i] for i in rng.choice(len(pool), k, replace=False)] if k else []
    for query in (review, 'N/A'):
      text = '\n\n'.join([*(sentiment_prompt(*d) for d in demos), sentiment_prompt(query)])
      # Each text starts with end-of-text, as every training document does (objectives/clm.py).
      context = [tokenizer.eos_id, *tokenizer.encode(text)]
      pairs += [(context, choice) for choice in choices]
  scores = score_continuations(model, params, pairs, max_context=max_context)
  # [example, (review, content-free), label]
  log_probs = np.array([s.log_prob for s in scores]).reshape(len(examples), 2, len(choices))
  predicted = log_probs[:, 0].argmax(-1)
  calibrated = (log_probs[:, 0] - log_probs[:, 1]).argmax(-1)
  labels = np.array([label for _, label in examples])
  return {'accuracy': float((predicted == labels).mean()),
          'calibrated_accuracy': float((calibrated == labels).mean()),
          'predicted_positive': float(predicted.mean()),
          'majority_baseline': float(max(labels.mean(), 1 - labels.mean()))}


def last_word_examples(documents: Sequence[Sequence[str]], *, min_words: int = 8,
                       max_examples: int | None = None) -> list[tuple[str, str]]:
  """(context, word) pairs: every paragraph ending in an alphabetic word (punctuation after
  it is dropped), with the document's earlier paragraphs as further context."""
  examples = []
  for document in documents:
    for i, paragraph in enumerate(document):
      match = _LAST_WORD.match(paragraph)
      if match and len(paragraph.split()) >= min_words:
        examples.append((' '.join([*document[:i], match.group(1)]), match.group(2)))
  return examples[:max_examples]


def last_word_accuracy(model, params, tokenizer, examples: Sequence[tuple[str, str]], *,
                       max_context: int | None = None) -> dict[str, float]:
  pairs = [([tokenizer.eos_id, *tokenizer.encode(context)], tokenizer.encode(f' {word}'))
           for context, word in examples]
  scores = score_continuations(model, params, pairs, max_context=max_context)
  return {'accuracy': float(np.mean([s.greedy for s in scores])),
          'word_perplexity': float(np.exp(-np.mean([s.log_prob for s in scores]))),
          'examples': float(len(scores))}


def run_incontext_eval(config, workdir: str, *, shots: Sequence[int] = (0, 1, 4),
                       num_examples: int = 500, sentiment_dir: str | os.PathLike = SENTIMENT_DIR,
                       seed: int = 0) -> dict[str, float]:
  """k-shot sentiment on `num_examples` test reviews and last-word accuracy on the held-out
  documents, for a decoder workdir. The context is capped at the trained sequence length:
  positions beyond it were never trained."""
  cfg, params, tokenizer, _ = loading.load_params(workdir)
  if not models.reads_left_to_right(cfg):
    raise ValueError(f'{workdir} holds an {cfg.arch}; in-context evaluation scores a decoder '
                     '(a left-to-right LM)')
  model = models.build(cfg)
  _, eval_docs = corpus.load_corpora(config)
  window = config.data.max_seq_len
  test = read_sentiment('test', sentiment_dir)
  test = [test[i] for i in np.random.default_rng(seed).permutation(len(test))[:num_examples]]
  train = read_sentiment('train', sentiment_dir)
  metrics = {}
  for k in shots:
    result = classify_by_prompting(model, params, tokenizer, test, train, k, seed=seed,
                                   max_context=window)
    for name in ('accuracy', 'calibrated_accuracy', 'predicted_positive'):
      metrics[f'sentiment/{k}shot_{name}'] = result[name]
  metrics['sentiment/majority_baseline'] = result['majority_baseline']
  lambada = last_word_accuracy(model, params, tokenizer,
                               last_word_examples(eval_docs, max_examples=num_examples),
                               max_context=window)
  metrics.update({f'last_word/{k}': v for k, v in lambada.items()})
  return metrics
