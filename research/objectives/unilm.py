"""UniLM (Dong et al. 2019): one bidirectional Transformer, several language models in one batch.

Every row is a cloze task on `[CLS] A [SEP] B [SEP]` (15% of tokens masked, BERT's 80/10/10);
what differs is who may see whom, which is data for the encoder's mask (models/masks.py):

  objective       share (Sec 2.3)  order      prefix_len          segments (LM identifier)
  bidirectional   1/3              position   length (all)        0 / 1
  sequence2seq    1/3              position   len([CLS] A [SEP])  4 / 5
  left-to-right   1/6              position   0                   2
  right-to-left   1/6              reversed   0                   3

with mask kind 'causal' throughout: a key is seen when it comes no later in the order or lies
inside the prefix. The segment embeddings double as the LM identifier ("we use different
segment embeddings for different LM objectives", Sec 2.1; unilm-v1's token types 0-5), so a
UniLM model has type_vocab_size 6. A and B are two contiguous pieces of one text cut at a
random point each epoch (the unidirectional rows read them as one stream); NSP is left out.
The masked positions are single tokens 80% of the time and bigrams or trigrams 20% (Sec 2.2;
mlm.ngram_positions); ngram_prob=0 masks single tokens only, as BERT.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from research.objectives import mlm, nsp

KINDS = ('bidirectional', 'seq2seq', 'l2r', 'r2l')
SHARES = (2, 2, 1, 1)  # sixths: 1/3, 1/3, 1/6, 1/6 (Sec 2.3)
SEGMENTS = {'bidirectional': (0, 1), 'seq2seq': (4, 5), 'l2r': (2, 2), 'r2l': (3, 3)}


@dataclasses.dataclass(frozen=True)
class UniLM(mlm.MaskedLM):
  """Batch: MaskedLM's (without NSP) + order int32 [B, L], prefix_len int32 [B], kind int32 [B]
  (index into KINDS, for per-objective metrics)."""
  name = 'unilm'
  nsp: bool = False
  ngram_prob: float = 0.2
  max_ngram: int = 3

  def examples(self, tokenizer, documents_ids, *, seq_len, seed):
    segments = nsp.make_nsp_examples(documents_ids, np.random.default_rng(seed),
                                     max_seq_len=seq_len - 1, short_seq_prob=self.short_seq_prob,
                                     use_nsp=False)  # one contiguous piece, 2 specials + 1 spare
    return [{'tokens': np.array(a, np.int32)} for a, _, _ in segments if len(a) >= 2]

  def corruptor(self, tokenizer, *, seq_len):
    mask = super().corruptor(tokenizer, seq_len=seq_len)
    probs = np.array(SHARES) / sum(SHARES)

    def corrupt(example, rng):
      kind = KINDS[rng.choice(len(KINDS), p=probs)]
      tokens = example['tokens'].tolist()
      cut = int(rng.integers(1, len(tokens)))  # A = tokens[:cut], B = the rest
      row = mlm.bert_example(tokens[:cut], tokens[cut:], False, tokenizer, seq_len)
      first, second = SEGMENTS[kind]
      length = int(row['attention_mask'].sum())
      source_len = cut + 2  # [CLS] A [SEP]
      row['segment_ids'] = np.where(np.arange(seq_len) < source_len, first, second).astype(
          np.int32) * row['attention_mask']
      positions = np.arange(seq_len, dtype=np.int32)
      order = np.where(positions < length, length - 1 - positions, positions) \
          if kind == 'r2l' else positions
      prefix = {'bidirectional': seq_len, 'seq2seq': source_len}.get(kind, 0)
      row.update(order=order.astype(np.int32), prefix_len=np.int32(prefix),
                 kind=np.int32(KINDS.index(kind)))
      return {k: v for k, v in mask(row, rng).items() if not k.startswith('nsp_')}
    return corrupt

  def mask_inputs(self, batch):
    return {'mask_kind': 'causal', 'order': batch['order'], 'prefix_len': batch['prefix_len']}


@dataclasses.dataclass(frozen=True)
class MaskedSeq2Seq(mlm.MaskedLM):
  """UniLM's seq2seq fine-tuning loss (Sec 2.4): masked target tokens under the seq2seq mask
  (rows by `pair_example`; masking per epoch by `pair_corruptor`)."""
  name = 'masked_seq2seq'
  nsp: bool = False
  segments: tuple[int, int] = (0, 0)  # segment ids of source and target (seq2seq_segments)
  target_mask_prob: float = 0.5  # target tokens masked per epoch

  def mask_inputs(self, batch):
    return {'mask_kind': 'causal', 'order': batch['order'], 'prefix_len': batch['prefix_len']}

  def pair_example(self, tokenizer, source, target, *, max_len, target_len):
    """`[CLS] source [SEP] target [SEP]` under the seq2seq mask, the target (and its [SEP])
    the positions `pair_corruptor` may mask; decoding predicts a [MASK] after the source."""
    prompt = [tokenizer.cls_id, *source[:max_len - target_len - 2], tokenizer.sep_id]
    answer = [*target[:target_len - 1], tokenizer.sep_id]
    ids = np.full(max_len, tokenizer.pad_id, np.int32)
    ids[:len(prompt) + len(answer)] = prompt + answer
    positions = np.arange(max_len)
    row = {'input_ids': ids, 'mlm_targets': ids.copy(),
           'segment_ids': np.where(positions < len(prompt), *self.segments).astype(np.int32),
           'attention_mask': (positions < len(prompt) + len(answer)).astype(np.int32),
           'order': positions.astype(np.int32), 'prefix_len': np.int32(len(prompt)),
           'mlm_weights': ((positions >= len(prompt))
                           & (positions < len(prompt) + len(answer))).astype(np.float32)}
    return row, prompt

  def decoding(self, tokenizer):
    return {**super().decoding(tokenizer), 'start_id': tokenizer.mask_id,
            'eos_id': tokenizer.sep_id}

  def pair_corruptor(self, tokenizer):
    """Each target position (mlm_weights > 0 before masking) replaced by [MASK] with
    probability target_mask_prob (at least one), weights 1 there (Sec 2.4)."""
    def corrupt(row, rng):
      candidates = row['mlm_weights'] > 0
      chosen = candidates & (rng.random(candidates.shape) < self.target_mask_prob)
      if candidates.any() and not chosen.any():
        chosen[rng.choice(np.flatnonzero(candidates))] = True
      return {**row, 'input_ids': np.where(chosen, tokenizer.mask_id, row['mlm_targets']),
              'mlm_weights': chosen.astype(np.float32)}
    return corrupt
