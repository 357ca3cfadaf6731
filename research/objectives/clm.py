"""Causal language modelling: GPT's next-token prediction on packed text.

Radford et al. 2018 (GPT), Sec 3.1: maximise sum_i log P(u_i | u_{i-k..i-1}).
Documents are concatenated, each followed by an end-of-text token, and the
stream is cut into fixed-length windows, as for GPT-2/GPT-3 ("documents
separated by an end-of-text token", Brown et al. 2020, Sec 2.3 / Appendix
B); no padding is ever needed.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from research.objectives import base, seq2seq


def pack_documents(documents_ids: list[list[int]], eos_id: int,
                   seq_len: int) -> np.ndarray:
  """Packs documents into windows of seq_len + 1 tokens.

  Consecutive windows overlap by one token (window k starts at k * seq_len),
  so every token of the stream except the first is a prediction target exactly
  once; only the final partial window is dropped.

  Args:
    documents_ids: documents as flat lists of token ids.
    eos_id: appended after every document, so the model learns where text ends
      and does not condition one document on the previous one unawares.
    seq_len: model sequence length L.

  Returns:
    int32 [N, seq_len + 1].
  """
  stream = np.fromiter(
      (t for doc in documents_ids for t in (*doc, eos_id)), dtype=np.int32)
  num_windows = max(0, (len(stream) - 1) // seq_len)
  starts = np.arange(num_windows)[:, None] * seq_len  # [N, 1]
  return stream[starts + np.arange(seq_len + 1)]  # [N, seq_len + 1]


def clm_batch(windows: np.ndarray) -> dict[str, np.ndarray]:
  """Inputs, next-token targets and weights from windows [..., L + 1]."""
  windows = np.asarray(windows, dtype=np.int32)
  return {
      'input_ids': windows[..., :-1],  # [..., L]
      'targets': windows[..., 1:],  # [..., L]
      'weights': np.ones(windows[..., 1:].shape, np.float32),  # [..., L]
  }


@dataclasses.dataclass(frozen=True)
class CausalLM(base.LanguageModelling):
  """GPT pretraining (arch='decoder'): next-token prediction on packed windows.

  Batch: input_ids, targets int32 [B, L], weights float32 [B, L] (all ones: no padding).
  `max_predictions` > 0 bounds the weighted positions per row (fine-tuning a decoder on a
  target after its prompt): only those rows of the hidden states are projected onto the
  vocabulary, which is most of a small model's step (d 128, vocab 8k: the head has more
  multiply-adds per token than 4 blocks). The loss is the same.
  """
  name = 'clm'
  archs = ('decoder',)
  max_predictions: int = 0
  # Fine-tuning on pairs: the prompt is a prefix read bidirectionally (PrefixLM).
  reads_prompt_bidirectionally: ClassVar[bool] = False

  def examples(self, tokenizer, documents_ids, *, seq_len, seed):
    windows = pack_documents([[t for line in doc for t in line] for doc in documents_ids],
                             tokenizer.eos_id, seq_len)  # [N, L + 1]
    return [clm_batch(w) for w in windows]

  def pair_example(self, tokenizer, source, target, *, max_len, target_len):
    """`</s> source [SEP] target </s>` in max_len tokens, scored on the target only (GPT-2
    Sec 3.7's "TL;DR:"-style conditioning); decoding continues `</s> source [SEP]`."""
    sep = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
    prompt = [tokenizer.eos_id, *source[:max_len - target_len - 2], sep]
    answer = [*target[:target_len - 1], tokenizer.eos_id]
    return seq2seq.lm_example(prompt, answer, max_len, tokenizer.pad_id,
                              self.reads_prompt_bidirectionally), prompt

  def decoding(self, tokenizer):
    return {**super().decoding(tokenizer),
            'bidirectional_prompt': self.reads_prompt_bidirectionally}

  def vocab_positions(self, seq_len):
    return min(self.max_predictions, seq_len) if self.max_predictions else None

  def terms(self, model, params, batch, rng, **mask):
    """`mask`: the model's mask arguments (PrefixLM: prefix_len)."""
    targets, weights = batch['targets'], batch['weights']
    k = self.vocab_positions(weights.shape[1])
    positions = None
    if k is not None:
      # The weighted positions first (weight 1 sorts first; top_k is stable), as MLM's gather.
      _, positions = jax.lax.top_k(weights, k)  # [batch, k]
      take = lambda x: jnp.take_along_axis(x, positions, axis=1)
      targets, weights = take(targets), take(weights)
    out = base.apply(model, params, batch['input_ids'], rng=rng, logit_positions=positions,
                     vocab_targets=(targets, weights), **mask)
    return base.vocab_terms('', out.vocab_loss, weights)
