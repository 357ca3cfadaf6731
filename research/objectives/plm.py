"""XLNet's permutation language modelling (Yang et al. 2019) with two-stream attention.

For each row a factorization order z is sampled (a uniform permutation of the positions) and
the model maximises log p(x_{z_t} | x_{z_<t}) for the last 1/K of the order only ("partial
prediction", Sec 2.3, K = 6 by default), so every predicted token sees most of the sequence.
As in the reference implementation (zihangdai/xlnet `data_utils._local_perm`), the context
tokens (those not predicted) all share the first place of the order (rank -1 there, 0 here):
they see each other both ways and never a predicted token, and the predicted ones follow in
z's order. `bidirectional_context=False` keeps the whole sequence causal over z instead (also
valid under Eq. 5, with less context for the tokens read first).
The content stream h reads tokens in z order (a key is seen iff it comes no later in z:
mask kind 'causal' over `order`); the query stream g, started from a learned vector w
embedded at the target's position as a token would be, sees strictly earlier tokens and never
its own content, and is what predicts (models/encoder.py, transformer.Stack). Both streams
share the Block's weights.

Unlike MLM, whose unchanged 10% of predicted tokens can be copied from the input, and the
causal LM, which reads the previous token in its own stream, every bit of context the query
stream gets must come through attention that has learned where to look. With absolute
positions that is slow: a copy task (rows a a b b ..., fresh each step) is learned in ~200
steps at 32 tokens and not in 400 at 128, and 1,200 steps of 8 x 128 tokens of Austen leave
a 4-layer model at the unigram plateau (docs/reproductions.md, "BART Table 1 ... in miniature").

Left out, as BART's permuted-LM baseline leaves them out (Lewis et al. 2020, Sec 4.1):
Transformer-XL's segment recurrence memory and relative positional / segment encodings
(absolute positions instead). Windows are packed text without specials.

Batch: input_ids, segment_ids, attention_mask int32 [B, L]; order int32 [B, L] (position i
is read at step order[i]); mlm_targets int32 [B, L] (= input_ids), mlm_weights float32 [B, L]
(1 on the predicted positions).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from research.objectives import clm, mlm


@dataclasses.dataclass(frozen=True)
class PermutationLM(mlm.MaskedLM):
  name = 'plm'
  nsp: bool = False
  partial_prediction: int = 6  # K: predict the last len/K tokens of each order
  bidirectional_context: bool = True  # the unpredicted tokens read each other both ways
  copyable_targets = False  # the query stream never sees the token it predicts

  def examples(self, tokenizer, documents_ids, *, seq_len, seed):
    windows = clm.pack_documents([[t for line in doc for t in line] for doc in documents_ids],
                                 tokenizer.eos_id, seq_len)[:, :seq_len]  # [N, L]
    return [{'input_ids': w, 'segment_ids': np.zeros_like(w),
             'attention_mask': np.ones_like(w)} for w in windows]

  def vocab_positions(self, seq_len):
    return num_predicted(seq_len, self.partial_prediction)

  def corruptor(self, tokenizer, *, seq_len):
    predicted = num_predicted(seq_len, self.partial_prediction)

    def corrupt(example, rng):
      order = rng.permutation(seq_len).astype(np.int32)  # position i is read at step order[i]
      weights = (order >= seq_len - predicted).astype(np.float32)
      if self.bidirectional_context:  # the context shares place 0; the predicted keep theirs
        order = np.where(weights > 0, order, 0).astype(np.int32)
      return {**example, 'order': order, 'mlm_targets': example['input_ids'],
              'mlm_weights': weights}
    return corrupt

  def mask_inputs(self, batch):
    return {'mask_kind': 'causal', 'order': batch['order'], 'query_stream': True}


def num_predicted(length: int, k: int) -> int:
  """Tokens predicted per row: the last 1/K of the order, at least one."""
  return max(1, length // k)
