"""The prefix LM: a decoder-only stack reading a prefix bidirectionally, then the rest
left-to-right (Raffel et al. 2020, Sec 3.2.1, Fig. 3 right; UniLM's seq2seq mask on one stack,
Dong et al. 2019); on an encoder-decoder, T5's "LM objective": the prefix is the encoder's
input and the rest the decoder's target (Sec 3.2.3, Table 2).

"We sample a span of text from our unlabeled data set and choose a random point to split it
into prefix and target portions" (T5 Sec 3.2.3): each packed window is split at a point drawn
uniformly each epoch; on a decoder the prefix is fully visible to itself (prefix_len,
models/masks.py), the rest is causal, and the loss covers the target portion only.

Batch (decoder): CausalLM's input_ids, targets, weights [B, L] (weights 0 inside the prefix)
+ prefix_len int32 [B]. Encoder-decoder: objectives/seq2seq.py's keys, the window's two
parts each followed by </s> (source and target length L).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from research.objectives import clm, seq2seq


@dataclasses.dataclass(frozen=True)
class PrefixLM(clm.CausalLM):
  name = 'prefix_lm'
  archs = ('decoder', 'encoder_decoder')
  reads_prompt_bidirectionally = True
  arch: str = 'decoder'
  decoder_start: str = 'pad'

  def examples(self, tokenizer, documents_ids, *, seq_len, seed):
    if self.arch == 'decoder':
      return super().examples(tokenizer, documents_ids, seq_len=seq_len, seed=seed)
    windows = clm.pack_documents([[t for line in doc for t in line] for doc in documents_ids],
                                 tokenizer.eos_id, seq_len - 2)[:, :-1]  # room for two </s>
    return [{'tokens': w} for w in windows]

  def corruptor(self, tokenizer, *, seq_len):
    start = seq2seq.start_id(tokenizer, self.decoder_start)

    def corrupt(example, rng):
      if self.arch == 'encoder_decoder':
        tokens = example['tokens'].tolist()
        cut = int(rng.integers(1, len(tokens)))
        return seq2seq.seq2seq_example(
            [*tokens[:cut], tokenizer.eos_id], [*tokens[cut:], tokenizer.eos_id],
            source_len=seq_len, target_len=seq_len, pad_id=tokenizer.pad_id, start=start)
      prefix = int(rng.integers(1, seq_len))  # at least one prefix and one target token
      # Input position i predicts token i + 1: the first target token is predicted at the
      # prefix's last position, which sees the whole prefix and nothing after it.
      weights = (np.arange(seq_len) >= prefix - 1).astype(np.float32)
      return {**example, 'weights': weights, 'prefix_len': np.int32(prefix)}
    return corrupt

  def terms(self, model, params, batch, rng):
    if self.arch == 'encoder_decoder':
      return seq2seq.Seq2SeqLM.terms(self, model, params, batch, rng)
    return super().terms(model, params, batch, rng, prefix_len=batch['prefix_len'])
