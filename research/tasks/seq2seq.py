"""Sequence-to-sequence fine-tuning inputs: (source, target) texts -> arrays and decoding prompts.

An encoder-decoder reads the source with its encoder and writes the target with its decoder,
both framed as its pretraining framed text (objectives/seq2seq.py `frame`: T5 `text </s>`,
BART `<s> text </s>`), the decoder teacher-forced on the target shifted right by its start
token. A decoder (GPT, prefix LM) reads one sequence `</s> source [SEP] target </s>` and is
trained on the target tokens only (Radford et al. 2019, Sec 3.7's "TL;DR:"-style conditioning;
T5 Sec 3.2.1 "prefix LM"); it decodes by continuing `</s> source [SEP]`.

T5 casts every task as text to text (Raffel et al. 2020, Sec 2.4): `as_text_to_text` turns a
classification example into "sentence1: ... sentence2: ..." -> its label word, and the
decoded word is mapped back to the class (anything else is wrong).

Arrays (numpy, pad_id-padded, weights 0 on padding):
  encoder_decoder: input_ids, attention_mask [N, S]; decoder_input_ids, decoder_mask, targets,
                   weights [N, T]   (the keys of objectives/seq2seq.py)
  decoder:         input_ids, targets, weights [N, L]   (the keys of objectives/clm.py)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from research.objectives.seq2seq import frame, seq2seq_example, start_id
from research.tasks.readers import Example


@dataclasses.dataclass(frozen=True)
class Seq2SeqStyle:
  arch: str  # 'encoder_decoder' | 'decoder'
  decoder_start: str  # 'pad' (T5) | 'eos' (BART)
  pad_id: int
  eos_id: int
  sep_id: int  # decoder-only: between source and target ([SEP], else the end-of-text id)
  start_id: int  # encoder_decoder: the decoder's first input

  @classmethod
  def create(cls, cfg, tokenizer) -> 'Seq2SeqStyle':
    if cfg.arch not in ('encoder_decoder', 'decoder'):
      raise ValueError(f'seq2seq fine-tuning generates text: it needs arch encoder_decoder or '
                       f'decoder, not {cfg.arch!r} (--config.finetune.init_from / '
                       '--config.model.arch)')
    sep = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
    return cls(cfg.arch, cfg.decoder_start, tokenizer.pad_id, tokenizer.eos_id, sep,
               start_id(tokenizer, cfg.decoder_start))


def target_length(style: Seq2SeqStyle, max_len: int, configured: int) -> int:
  """Decoder length (encoder_decoder) or target budget within max_len (decoder)."""
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
    else:
      prompt = [style.eos_id, *source[:max_len - target_len - 2], style.sep_id]
      answer = [*target[:target_len - 1], style.eos_id]
      ids = np.full(max_len + 1, style.pad_id, np.int32)
      ids[:len(prompt) + len(answer)] = prompt + answer
      weights = np.zeros(max_len, np.float32)
      weights[len(prompt) - 1:len(prompt) + len(answer) - 1] = 1.0  # predict the answer only
      row = {'input_ids': ids[:-1], 'targets': ids[1:], 'weights': weights}
      prompts.append(prompt)
    if e.target is None:
      row['weights'] = np.zeros_like(row['weights'])
    rows.append(row)
  arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}
  return arrays, prompts


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


def label_of(text: str, label_words: Sequence[str]) -> int:
  """The class whose word the model wrote (exact match after stripping), else -1 (wrong)."""
  text = text.strip()
  return next((i for i, w in enumerate(label_words) if w == text), -1)
