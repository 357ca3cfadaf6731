"""Sequence-to-sequence fine-tuning inputs: (source, target) texts -> arrays and decoding prompts.

An encoder-decoder reads the source with its encoder and writes the target with its decoder,
both framed as its pretraining framed text (objectives/seq2seq.py `frame`: T5 `text </s>`,
BART `<s> text </s>`), the decoder teacher-forced on the target shifted right by its start
token. A decoder (GPT, prefix LM) reads one sequence `</s> source [SEP] target </s>` and is
trained on the target tokens only (Radford et al. 2019, Sec 3.7's "TL;DR:"-style conditioning;
T5 Sec 3.2.1 "prefix LM", whose source part is read bidirectionally); it decodes by
continuing `</s> source [SEP]`. An encoder (BERT, UniLM, XLNet) is fine-tuned as UniLM does
(Dong et al. 2019, Sec 2.4): `[CLS] source [SEP] target [SEP]` under the seq2seq mask, a
random half of the target tokens replaced by [MASK] each epoch and predicted; it decodes by
predicting a [MASK] placed after the text so far (models/encoder.py `prefill`).

T5 casts every task as text to text (Raffel et al. 2020, Sec 2.4): `as_text_to_text` turns a
classification example into "sentence1: ... sentence2: ..." -> its label word, and the
decoded word is mapped back to the class (anything else is wrong).

Arrays (numpy, pad_id-padded, weights 0 on padding):
  encoder_decoder: input_ids, attention_mask [N, S]; decoder_input_ids, decoder_mask, targets,
                   weights [N, T]   (the keys of objectives/seq2seq.py)
  decoder:         input_ids, targets, weights [N, L]   (the keys of objectives/clm.py)
                   (+ prefix_len [N] with a bidirectional source)
  encoder:         input_ids, segment_ids, attention_mask, order, mlm_targets, mlm_weights
                   [N, L], prefix_len [N]   (objectives/unilm.py's keys; masked by `corruptor`)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from research.models.encoder import seq2seq_segments
from research.objectives.seq2seq import frame, seq2seq_example, start_id
from research.tasks.readers import Example


@dataclasses.dataclass(frozen=True)
class Seq2SeqStyle:
  arch: str  # 'encoder_decoder' | 'decoder' | 'encoder'
  decoder_start: str  # 'pad' (T5) | 'eos' (BART)
  pad_id: int
  eos_id: int
  sep_id: int  # between source and target ([SEP], else the end-of-text id)
  # The first token fed when decoding: the encoder-decoder's decoder start token, or an
  # encoder's [MASK] (the position it predicts); end_id stops decoding.
  start_id: int
  end_id: int
  cls_id: int | None = None
  segments: tuple[int, int] = (0, 0)  # encoder: segment ids of source and target
  bidirectional_prompt: bool = False  # decoder: the source is a prefix-LM prefix

  @classmethod
  def create(cls, cfg, tokenizer, bidirectional_prompt: bool = False) -> 'Seq2SeqStyle':
    sep = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
    if cfg.arch == 'encoder':
      missing = [n for n in ('cls', 'sep', 'mask') if getattr(tokenizer, f'{n}_id') is None]
      if missing:
        raise ValueError(f'an encoder writes text UniLM-style with [CLS]/[SEP]/[MASK]; this '
                         f'vocabulary lacks {"/".join(missing)}')
      return cls(cfg.arch, cfg.decoder_start, tokenizer.pad_id, tokenizer.eos_id, sep,
                 tokenizer.mask_id, sep, tokenizer.cls_id, seq2seq_segments(cfg))
    start = start_id(tokenizer, cfg.decoder_start)
    return cls(cfg.arch, cfg.decoder_start, tokenizer.pad_id, tokenizer.eos_id, sep, start,
               tokenizer.eos_id, bidirectional_prompt=bidirectional_prompt)


def target_length(style: Seq2SeqStyle, max_len: int, configured: int) -> int:
  """Decoder length (encoder_decoder) or target budget within max_len (decoder, encoder)."""
  return configured or (max_len if style.arch == 'encoder_decoder' else max_len // 2)


def encode_seq2seq(examples: Sequence[Example], tokenizer, style: Seq2SeqStyle, max_len: int,
                   target_len: int) -> tuple[dict[str, np.ndarray], list[list[int]]]:
  """(arrays, decoding prompts) of (source, target) examples; see the module docstring.

  encoder_decoder: sources cut to max_len, targets to target_len tokens (framing included).
  decoder: max_len tokens in all, of which target_len are the target's budget (with </s>).
  Unlabelled examples (target None) get weight 0.
  """
  sources = tokenizer.encode_batch([e.texts[0] for e in examples])
  targets = tokenizer.encode_batch([e.target or '' for e in examples])
  rows, prompts = [], []
  for e, source, target in zip(examples, sources, targets):
    if style.arch == 'encoder_decoder':
      framed_source = frame(tokenizer, source, style.decoder_start)
      framed_source = framed_source[:max_len - 1] + framed_source[-1:] \
          if len(framed_source) > max_len else framed_source
      framed_target = frame(tokenizer, target, style.decoder_start)
      framed_target = framed_target[:target_len - 1] + framed_target[-1:] \
          if len(framed_target) > target_len else framed_target
      row = seq2seq_example(framed_source, framed_target, source_len=max_len,
                            target_len=target_len, pad_id=style.pad_id, start=style.start_id)
      prompts.append(framed_source)
    elif style.arch == 'decoder':
      prompt = [style.eos_id, *source[:max_len - target_len - 2], style.sep_id]
      answer = [*target[:target_len - 1], style.eos_id]
      ids = np.full(max_len + 1, style.pad_id, np.int32)
      ids[:len(prompt) + len(answer)] = prompt + answer
      weights = np.zeros(max_len, np.float32)
      weights[len(prompt) - 1:len(prompt) + len(answer) - 1] = 1.0  # predict the answer only
      row = {'input_ids': ids[:-1], 'targets': ids[1:], 'weights': weights}
      if style.bidirectional_prompt:
        row['prefix_len'] = np.int32(len(prompt))
      prompts.append(prompt)
    else:
      prompt = [style.cls_id, *source[:max_len - target_len - 2], style.sep_id]
      answer = [*target[:target_len - 1], style.sep_id]
      ids = np.full(max_len, style.pad_id, np.int32)
      ids[:len(prompt) + len(answer)] = prompt + answer
      positions = np.arange(max_len)
      row = {'input_ids': ids, 'mlm_targets': ids.copy(),
             'segment_ids': np.where(positions < len(prompt), *style.segments).astype(np.int32),
             'attention_mask': (positions < len(prompt) + len(answer)).astype(np.int32),
             'order': positions.astype(np.int32), 'prefix_len': np.int32(len(prompt)),
             # Which positions may be masked: the target and its final [SEP].
             'mlm_weights': ((positions >= len(prompt))
                             & (positions < len(prompt) + len(answer))).astype(np.float32)}
      prompts.append(prompt)
    if e.target is None:
      key = 'mlm_weights' if style.arch == 'encoder' else 'weights'
      row[key] = np.zeros_like(row[key])
    rows.append(row)
  arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}
  return arrays, prompts


def target_masking(style: Seq2SeqStyle, mask_prob: float):
  """(row, rng) -> the row with each target position (mlm_weights > 0 before masking)
  replaced by [MASK] with probability mask_prob (at least one), weights 1 there (UniLM's
  fine-tuning, Sec 2.4; its decoding predicts a [MASK] the same way)."""
  def corrupt(row, rng):
    candidates = row['mlm_weights'] > 0
    chosen = candidates & (rng.random(candidates.shape) < mask_prob)
    if candidates.any() and not chosen.any():
      chosen[rng.choice(np.flatnonzero(candidates))] = True
    return {**row, 'input_ids': np.where(chosen, style.start_id, row['mlm_targets']),
            'mlm_weights': chosen.astype(np.float32)}
  return corrupt


def as_text_to_text(examples: Sequence[Example], label_words: Sequence[str],
                    labels: Sequence[str], names: Sequence[str]) -> list[Example]:
  """T5's text-to-text form of classification examples: source "name1: text1 name2: text2",
  target the label's word (Raffel et al. 2020, Sec 2.4 and Appendix D)."""
  word = dict(zip(labels, label_words))
  out = []
  for e in examples:
    source = ' '.join(f'{name}: {text}' for name, text in zip(names, e.texts))
    target = None if e.label is None else word.get(str(e.label))
    out.append(dataclasses.replace(e, texts=(source,), target=target))
  return out


def check_label_words(label_words: Sequence[str], tokenizer, style: Seq2SeqStyle,
                      target_len: int) -> None:
  """Refuses a label word longer than the target: encode_seq2seq would cut it, and a model
  trained on the cut word never writes the whole word that label_of matches."""
  for word in label_words:
    ids = tokenizer.encode(word)
    length = (len(frame(tokenizer, ids, style.decoder_start)) if style.arch == 'encoder_decoder'
              else len(ids) + 1)  # + the end token
    if length > target_len:
      raise ValueError(
          f'label word {word!r} is {length} target tokens with its end token, more than the '
          f'target length {target_len}, so it would be cut and never match; raise '
          '--config.task.max_target_len or give shorter --config.finetune.label_words')


def label_of(text: str, label_words: Sequence[str]) -> int:
  """The class whose word the model wrote (exact match after stripping), else -1 (wrong)."""
  text = text.strip()
  return next((i for i, w in enumerate(label_words) if w == text), -1)
