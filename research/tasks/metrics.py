"""Task metrics as the benchmarks report them, computed on the host from gold and predictions.

Values are fractions in [0, 1] (the tables multiply by 100), except BLEU and chrF, which keep
sacrebleu's 0-100 scale (the one their signatures and every translation table use).
The GLUE set (Wang et al. 2019, Table 1): accuracy, F1 of the positive class (MRPC, QQP),
Matthews correlation (CoLA), Pearson and Spearman correlation (STS-B). Tagging: entity-level
F1 as conlleval computes it when the tags are BIO chunks (CoNLL-2003 NER, BERT Sec 5.3), else
per-token accuracy (POS).
SQuAD v1.1: exact match and token F1 after the official script's answer normalisation.
Seq2seq: corpus BLEU (Papineni et al. 2002) and chrF (Popovic 2015) as sacrebleu computes them
with its defaults (Post 2018: scores are comparable only with the same signature), and exact
match of the whole output.
"""
from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence

import numpy as np
from sacrebleu.metrics import BLEU, CHRF


def accuracy(gold: Sequence, pred: Sequence) -> float:
  gold, pred = np.asarray(gold), np.asarray(pred)
  return float(np.mean(gold == pred)) if len(gold) else 0.0


def f1(gold: Sequence, pred: Sequence, positive=1) -> float:
  """F1 of the positive class (GLUE's MRPC and QQP F1)."""
  gold, pred = np.asarray(gold) == positive, np.asarray(pred) == positive
  tp = np.sum(gold & pred)
  denominator = np.sum(gold) + np.sum(pred)
  return float(2 * tp / denominator) if denominator else 0.0


def matthews_corrcoef(gold: Sequence, pred: Sequence) -> float:
  """Matthews correlation (CoLA), in Gorodkin's multi-class form; 0 when undefined (as sklearn).

  With the confusion matrix C (rows gold, columns predicted), c = trace(C), s = sum(C),
  t = row sums, p = column sums: MCC = (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)).
  """
  classes, index = np.unique(np.concatenate([np.asarray(gold), np.asarray(pred)]),
                             return_inverse=True)
  gold_i, pred_i = index[:len(gold)], index[len(gold):]
  confusion = np.zeros((len(classes), len(classes)), np.float64)
  np.add.at(confusion, (gold_i, pred_i), 1)
  t, p = confusion.sum(1), confusion.sum(0)
  c, s = np.trace(confusion), confusion.sum()
  denominator = np.sqrt((s * s - p @ p) * (s * s - t @ t))
  return float((c * s - t @ p) / denominator) if denominator else 0.0


def pearson(gold: Sequence[float], pred: Sequence[float]) -> float:
  gold, pred = np.asarray(gold, np.float64), np.asarray(pred, np.float64)
  gold, pred = gold - gold.mean(), pred - pred.mean()
  denominator = np.sqrt((gold @ gold) * (pred @ pred))
  return float(gold @ pred / denominator) if denominator else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks; tied values share the mean of their ranks (as scipy.stats.rankdata)."""
  order = np.argsort(x, kind='stable')
  sorted_x = x[order]
  # Boundaries of runs of equal values in sorted order.
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], len(x)]
  mean_rank = (starts + ends + 1) / 2  # mean of ranks start+1 .. end
  ranks = np.empty(len(x))
  ranks[order] = np.repeat(mean_rank, ends - starts)
  return ranks


def spearman(gold: Sequence[float], pred: Sequence[float]) -> float:
  """Pearson correlation of the (tie-averaged) ranks."""
  return pearson(_ranks(np.asarray(gold, np.float64)), _ranks(np.asarray(pred, np.float64)))


# --- tagging


def is_bio(tags: Sequence[str]) -> bool:
  """True if every tag is 'O' or a B-/I- chunk tag, i.e. entity-level scoring applies."""
  return bool(tags) and all(t == 'O' or t[:2] in ('B-', 'I-') for t in tags)


def chunks(tags: Sequence[str]) -> set[tuple[int, int, str]]:
  """(start, end_exclusive, type) of each chunk, with conlleval's rules: a chunk starts at
  B-X, or at I-X after O or after a chunk of another type (IOB1 leniency)."""
  found, start, kind = set(), None, None
  for i, tag in enumerate([*tags, 'O']):
    prefix, _, tag_kind = tag.partition('-')
    continues = prefix == 'I' and tag_kind == kind and start is not None
    if start is not None and not continues:
      found.add((start, i, kind))
      start, kind = None, None
    if prefix in ('B', 'I') and not continues:
      start, kind = i, tag_kind
  return found


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
  """Micro-averaged chunk precision, recall and F1 over sentences (conlleval's FB1)."""
  correct = n_gold = n_pred = 0
  for gold_tags, pred_tags in zip(gold, pred):
    g, p = chunks(gold_tags), chunks(pred_tags)
    correct += len(g & p)
    n_gold += len(g)
    n_pred += len(p)
  precision = correct / n_pred if n_pred else 0.0
  recall = correct / n_gold if n_gold else 0.0
  f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {'entity_f1': f, 'entity_precision': precision, 'entity_recall': recall}


def token_accuracy(gold: Sequence[Sequence[str]], pred: Sequence[Sequence]) -> float:
  """Fraction of words tagged correctly; a word with no prediction (None) counts as wrong."""
  pairs = [(g, p) for gs, ps in zip(gold, pred) for g, p in zip(gs, ps)]
  return sum(g == p for g, p in pairs) / len(pairs) if pairs else 0.0


# --- SQuAD v1.1 (the official evaluate-v1.1.py, Rajpurkar et al. 2016)


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
  """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
  s = ''.join(ch for ch in s.lower() if ch not in _PUNCTUATION)
  s = re.sub(r'\b(a|an|the)\b', ' ', s)
  return ' '.join(s.split())


def squad_f1(prediction: str, truth: str) -> float:
  pred_tokens, truth_tokens = normalize_answer(prediction).split(), normalize_answer(truth).split()
  common = collections.Counter(pred_tokens) & collections.Counter(truth_tokens)
  same = sum(common.values())
  if not same:
    return 0.0
  precision, recall = same / len(pred_tokens), same / len(truth_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_scores(answers: Sequence[Sequence[str]], predictions: Sequence[str]) -> dict:
  """Mean over questions of the best exact match / F1 against any of the gold answers."""
  em = [max(float(normalize_answer(p) == normalize_answer(a)) for a in golds)
        for golds, p in zip(answers, predictions)]
  f = [max(squad_f1(p, a) for a in golds) for golds, p in zip(answers, predictions)]
  n = max(len(em), 1)
  return {'exact_match': sum(em) / n, 'f1': sum(f) / n}


# --- seq2seq (sacrebleu)


SEQ2SEQ_METRICS = ('bleu', 'chrf', 'exact_match')


def _sacrebleu_metrics(references: Sequence[str]) -> dict:
  """BLEU (13a tokenisation, exponential smoothing) and chrF (character 6-grams, beta 2) with
  sacrebleu's defaults, one reference per hypothesis, given to the constructors (sacrebleu's
  reference cache), which also fixes the reference count the signatures record."""
  return {'bleu': BLEU(references=[list(references)]),
          'chrf': CHRF(references=[list(references)])}


def seq2seq_scores(references: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU and chrF (0-100) of `predictions` against one reference each, and the
  fraction predicted exactly (ignoring surrounding whitespace)."""
  if len(references) != len(predictions):
    raise ValueError(f'{len(predictions)} predictions for {len(references)} references')
  if not references:
    return {name: 0.0 for name in SEQ2SEQ_METRICS}
  scores = {name: float(metric.corpus_score(list(predictions), None).score)
            for name, metric in _sacrebleu_metrics(references).items()}
  scores['exact_match'] = sum(p.strip() == r.strip()
                              for p, r in zip(predictions, references)) / len(references)
  return scores


def seq2seq_signatures() -> dict[str, str]:
  """sacrebleu's reproducibility signatures of `seq2seq_scores`' BLEU and chrF, e.g.
  'nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0', for logs and tables.

  A signature records the reference count, which sacrebleu learns from the references: a
  one-sentence set stands in for the data (the options, not the text, make the signature).
  """
  return {name: str(metric.get_signature()) for name, metric in _sacrebleu_metrics(['']).items()}


SEQUENCE_METRICS = {
    'accuracy': accuracy, 'f1': f1, 'mcc': matthews_corrcoef,
    'pearson': pearson, 'spearman': spearman,
}
