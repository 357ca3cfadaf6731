"""The prefix LM: a decoder-only stack reading a prefix bidirectionally, then the rest
left-to-right (Raffel et al. 2020, Sec 3.2.1, Fig. 3 right; UniLM's seq2seq mask on one stack,
Dong et al. 2019).

"We sample a span of text from our unlabeled data set and choose a random point to split it
into prefix and target portions" (T5 Sec 3.2.3): each packed window is split at a point drawn
uniformly each epoch; the prefix is fully visible to itself (prefix_len, models/masks.py), the
rest is causal, and the loss covers the target portion only.

Batch: CausalLM's input_ids, targets, weights [B, L] (weights 0 inside the prefix) +
prefix_len int32 [B].
"""
from __future__ import annotations

import dataclasses

import numpy as np

from research.objectives import base, clm


@dataclasses.dataclass(frozen=True)
class PrefixLM(clm.CausalLM):
  name = 'prefix_lm'

  def corruptor(self, tokenizer, *, seq_len):
    def corrupt(example, rng):
      prefix = int(rng.integers(1, seq_len))  # at least one prefix and one target token
      # Input position i predicts token i + 1: the first target token is predicted at the
      # prefix's last position, which sees the whole prefix and nothing after it.
      weights = (np.arange(seq_len) >= prefix - 1).astype(np.float32)
      return {**example, 'weights': weights, 'prefix_len': np.int32(prefix)}
    return corrupt

  def terms(self, model, params, batch, rng):
    out = base.apply(model, params, batch['input_ids'], prefix_len=batch['prefix_len'], rng=rng)
    return base.token_terms('', out.logits, batch['targets'], batch['weights'])
