"""Encoder-decoder pretraining: T5's span corruption and BART's denoising autoencoder.

Both corrupt a text on the host (span_corruption.py, denoising.py), feed the corrupted text
to the encoder and train the decoder, teacher-forced, to write the target: T5 the dropped
spans after their sentinels (Raffel et al. 2020, Sec 3.1.4, Fig. 2), BART the whole original
document (Lewis et al. 2020, Sec 2.2). The decoder reads the target shifted right by one
start token: pad for T5, eos for BART (`ModelConfig.decoder_start`).

Batch (padded with pad_id, weights 0 on padding):
  input_ids, attention_mask int32 [B, S]           the corrupted source
  decoder_input_ids, decoder_mask int32 [B, T]     start token + target[:-1]
  targets int32 [B, T], weights float32 [B, T]     the target
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from research.models.encoder_decoder import frame, start_id
from research.models.vocab_loss import VocabLoss
from research.objectives import base, denoising, span_corruption


def shift_right(targets: np.ndarray, start_id: int) -> np.ndarray:
  """Decoder inputs [..., T]: the start token, then the targets but their last token."""
  return np.concatenate([np.full(targets.shape[:-1] + (1,), start_id, targets.dtype),
                         targets[..., :-1]], axis=-1)


def lm_example(inputs: Sequence[int], targets: Sequence[int], length: int, pad_id: int,
               bidirectional_inputs: bool) -> base.Example:
  """One decoder row reading inputs then targets, scored on the targets: input_ids, targets,
  weights [length] (+ prefix_len = len(inputs) when the inputs are a bidirectional prefix)."""
  sequence = np.full(length + 1, pad_id, np.int32)
  sequence[:len(inputs) + len(targets)] = [*inputs, *targets]
  weights = np.zeros(length, np.float32)
  weights[len(inputs) - 1:len(inputs) + len(targets) - 1] = 1.0  # position i predicts i + 1
  row = {'input_ids': sequence[:-1], 'targets': sequence[1:], 'weights': weights}
  if bidirectional_inputs:
    row['prefix_len'] = np.int32(len(inputs))
  return row


def seq2seq_example(source: Sequence[int], target: Sequence[int], *, source_len: int,
                    target_len: int, pad_id: int, start: int) -> base.Example:
  """Padded arrays of one (source, target) pair (see module docstring); both must fit."""
  def padded(ids, length):
    out = np.full(length, pad_id, np.int32)
    out[:len(ids)] = ids
    return out
  targets = padded(target, target_len)
  valid = np.arange(target_len) < len(target)
  return {'input_ids': padded(source, source_len),
          'attention_mask': (np.arange(source_len) < len(source)).astype(np.int32),
          'decoder_input_ids': shift_right(targets, start),
          'decoder_mask': valid.astype(np.int32),
          'targets': targets, 'weights': valid.astype(np.float32)}


def decoder_scores(model, params, batch, rng) -> VocabLoss:
  """An encoder-decoder's teacher-forced scores of batch['targets'] (weights batch['weights']):
  the weighted cross-entropy and per-position correctness (models/vocab_loss.py)."""
  return base.apply(model, params, batch['input_ids'], batch['decoder_input_ids'],
                    batch['attention_mask'], batch['decoder_mask'], rng=rng,
                    vocab_targets=(batch['targets'], batch['weights'])).vocab_loss


@dataclasses.dataclass(frozen=True)
class Seq2SeqLM(base.LanguageModelling):
  """Teacher-forced cross-entropy of the decoder's next-token predictions.

  Fine-tuned on (source, target) pairs, the encoder reads the framed source and the decoder
  writes the framed target from its start token (T5 Sec 2.4, BART Sec 3.4)."""
  archs = ('encoder_decoder',)
  decoder_start: str = 'pad'

  def terms(self, model, params, batch, rng):
    return base.vocab_terms('', decoder_scores(model, params, batch, rng), batch['weights'])

  def pair_example(self, tokenizer, source, target, *, max_len, target_len):
    """Source cut to max_len and target to target_len tokens, framing (its </s>) kept."""
    cut = lambda ids, n: ids[:n - 1] + ids[-1:] if len(ids) > n else ids
    framed_source = cut(frame(tokenizer, source, self.decoder_start), max_len)
    framed_target = cut(frame(tokenizer, target, self.decoder_start), target_len)
    row = seq2seq_example(framed_source, framed_target, source_len=max_len,
                          target_len=target_len, pad_id=tokenizer.pad_id,
                          start=start_id(tokenizer, self.decoder_start))
    return row, framed_source

  def target_tokens(self, tokenizer, ids):
    return len(frame(tokenizer, ids, self.decoder_start))

  def decoding(self, tokenizer):
    return {**super().decoding(tokenizer),
            'start_id': start_id(tokenizer, self.decoder_start)}


@dataclasses.dataclass(frozen=True)
class SpanCorruption(Seq2SeqLM):
  """T5's pretraining objective: 15% of tokens dropped in spans of mean length 3, each span
  replaced by a sentinel in the input; the target lists the spans after their sentinels.

  Text is packed as for the LM (documents joined by EOS) and cut into windows of the raw
  length that `random_spans_helper` computes for the encoder length (t5's
  `span_corruption` on C4: 568 raw tokens for 512 inputs, 114 targets); a new noise mask is
  drawn every epoch. The model reserves `num_sentinels` ids above the tokenizer's (T5: 100
  extra_ids) for the sentinels, which count down from the vocabulary's end.

  A decoder (arch='decoder') reads inputs and targets as one sequence and is trained on the
  targets (T5 Sec 3.2.3, Table 2 "Language model" / "Prefix LM" rows with the denoising
  objective): causally, or with the inputs as a bidirectional prefix
  (`bidirectional_inputs`). Batch: CausalLM's keys over S + T - 1 tokens (+ prefix_len).

  Both add `span_weights` (like `weights`, but 1 only on the dropped text tokens): the
  sentinels follow a fixed countdown and EOS ends every target, so plain accuracy credits a
  model that has learned only those (about a quarter of the targets at mean span 3);
  `span_accuracy` is the accuracy on the dropped text alone, to read beside the most frequent
  token's rate (the unigram plateau), as MLM's `mlm_masked_accuracy`.
  """
  name = 'span_corruption'
  archs = ('encoder_decoder', 'decoder')
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0
  num_sentinels: int = 100
  decoder_start: str = 'pad'
  arch: str = 'encoder_decoder'
  bidirectional_inputs: bool = False

  @property
  def extra_ids(self) -> int:
    return self.num_sentinels

  def lengths(self, inputs_length: int) -> tuple[int, int]:
    """(raw tokens per window, target length) for encoder inputs of `inputs_length`."""
    return span_corruption.random_spans_helper(inputs_length, self.noise_density,
                                               self.mean_noise_span_length)

  def examples(self, tokenizer, documents_ids, *, seq_len, seed):
    raw, _ = self.lengths(seq_len)
    stream = np.fromiter((t for doc in documents_ids for line_or_eos in (*doc, [tokenizer.eos_id])
                          for t in line_or_eos), np.int32)
    windows = stream[:len(stream) // raw * raw].reshape(-1, raw)  # [N, raw], no overlap
    return [{'tokens': w} for w in windows]

  def corruptor(self, tokenizer, *, seq_len):
    vocab_size = tokenizer.vocab_size + self.num_sentinels
    start = start_id(tokenizer, self.decoder_start)
    _, targets_len = self.lengths(seq_len)

    def corrupt(example, rng):
      inputs, targets = span_corruption.span_corruption(
          example['tokens'], rng, vocab_size=vocab_size, eos_id=tokenizer.eos_id,
          noise_density=self.noise_density, mean_noise_span_length=self.mean_noise_span_length)
      if self.arch == 'decoder':
        row = lm_example(inputs, targets, seq_len + targets_len - 1, tokenizer.pad_id,
                         self.bidirectional_inputs)
      else:
        row = seq2seq_example(inputs, targets, source_len=seq_len, target_len=targets_len,
                              pad_id=tokenizer.pad_id, start=start)
      is_text = (row['targets'] < tokenizer.vocab_size) & (row['targets'] != tokenizer.eos_id)
      return {**row, 'span_weights': row['weights'] * is_text}
    return corrupt

  def terms(self, model, params, batch, rng):
    if self.arch == 'decoder':
      prefix = {'prefix_len': batch['prefix_len']} if self.bidirectional_inputs else {}
      scores = base.apply(model, params, batch['input_ids'], rng=rng,
                          vocab_targets=(batch['targets'], batch['weights']), **prefix).vocab_loss
    else:
      scores = decoder_scores(model, params, batch, rng)
    terms = base.vocab_terms('', scores, batch['weights'])
    terms['span_accuracy'] = base.pair(scores.correct * batch['span_weights'],
                                       batch['span_weights'])
    return terms


@dataclasses.dataclass(frozen=True)
class Denoising(Seq2SeqLM):
  """BART's pretraining objective: reconstruct a document from a noised copy.

  `noises` names fairseq's noises (denoising.NOISES); BART's best (Sec 4.2, Table 1) is text
  infilling + sentence permutation, with 30% of tokens masked in Poisson(3) spans. Documents
  are cut into chunks of max_seq_len - 2 tokens within a document, framed by <s> ... </s>
  (fairseq's TokenBlockDataset with complete documents); noise that lengthens a source (an
  inserted mask) is cut at max_seq_len, keeping its </s>.
  """
  name = 'denoising'
  noises: tuple[str, ...] = ('infilling', 'permute')
  mask_ratio: float = 0.3
  random_ratio: float = 0.1
  poisson_lambda: float = 3.0
  replace_length: int = 1
  insert_ratio: float = 0.0
  permute_ratio: float = 1.0
  rotate_ratio: float = 1.0
  decoder_start: str = 'eos'

  def __post_init__(self):
    bad = [n for n in self.noises if n not in denoising.NOISES]
    if bad or not self.noises:
      raise ValueError(f'unknown BART noise(s) {", ".join(bad) or "(none given)"}; choose '
                       f'from {", ".join(denoising.NOISES)} (--config.objective.noises)')

  def examples(self, tokenizer, documents_ids, *, seq_len, seed):
    chunk = seq_len - 2
    out = []
    for doc in documents_ids:
      stream = [t for line in doc for t in line]
      for start in range(0, len(stream), chunk):
        piece = stream[start:start + chunk]
        if len(piece) > 1:
          out.append({'tokens': np.array([tokenizer.bos_id, *piece, tokenizer.eos_id],
                                         np.int32)})
    return out

  def corruptor(self, tokenizer, *, seq_len):
    pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    # Whole-word masking as fairseq's BART (SentencePiece '▁' / byte-level BPE 'Ġ' begin a word).
    is_word_start = np.array([p.startswith(('▁', 'Ġ')) for p in pieces])
    is_sentence_end = np.array([p.rstrip('"\'').endswith(('.', '!', '?')) for p in pieces])
    specials = tuple(sorted(tokenizer.special_ids))
    start = start_id(tokenizer, self.decoder_start)
    settings = dict(noises=self.noises, mask_id=tokenizer.mask_id,
                    vocab_size=tokenizer.vocab_size, mask_ratio=self.mask_ratio,
                    random_ratio=self.random_ratio, poisson_lambda=self.poisson_lambda,
                    replace_length=self.replace_length, insert_ratio=self.insert_ratio,
                    permute_ratio=self.permute_ratio, rotate_ratio=self.rotate_ratio,
                    is_word_start=is_word_start, is_sentence_end=is_sentence_end,
                    special_ids=specials)

    def corrupt(example, rng):
      target = example['tokens']
      source = denoising.add_noise(target, rng, **settings)
      if len(source) > seq_len:
        source = np.concatenate([source[:seq_len - 1], source[-1:]])
      return seq2seq_example(source, target, source_len=seq_len, target_len=seq_len,
                             pad_id=tokenizer.pad_id, start=start)
    return corrupt
