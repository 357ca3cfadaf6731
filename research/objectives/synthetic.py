"""Batches of random tokens in the layout each objective's input pipeline produces (every row
full, no padding): what throughput benchmarks time and what research/plan.py compiles for."""
from __future__ import annotations

import numpy as np

from research import objectives
from research.objectives import seq2seq


def synthetic_batch(objective, batch: int, seq_len: int, vocab: int,
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Random token ids in the layout each objective's pipeline produces (full rows)."""
  ids = rng.integers(7, vocab, (batch, seq_len), dtype=np.int32)
  if isinstance(objective, objectives.CausalLM):
    return {'input_ids': ids, 'targets': np.roll(ids, -1, 1),
            'weights': np.ones((batch, seq_len), np.float32)}
  if isinstance(objective, objectives.PermutationLM):  # before MaskedLM, its base class
    order = np.stack([rng.permutation(seq_len) for _ in range(batch)]).astype(np.int32)
    predicted = objective.vocab_positions(seq_len)
    return {'input_ids': ids, 'segment_ids': np.zeros_like(ids),
            'attention_mask': np.ones_like(ids), 'order': order, 'mlm_targets': ids,
            'mlm_weights': (order >= seq_len - predicted).astype(np.float32)}
  if isinstance(objective, objectives.MaskedLM):
    mlm_weights = np.zeros((batch, seq_len), np.float32)
    for row in mlm_weights:
      row[rng.choice(seq_len, objective.max_predictions, replace=False)] = 1
    segments = (np.arange(seq_len) >= seq_len // 2)[None].repeat(batch, 0).astype(np.int32)
    return {'input_ids': ids, 'segment_ids': segments,
            'attention_mask': np.ones((batch, seq_len), np.int32), 'mlm_targets': ids,
            'mlm_weights': mlm_weights, 'nsp_labels': rng.integers(0, 2, batch, dtype=np.int32),
            'nsp_weights': np.ones(batch, np.float32)}
  target_len = (objective.lengths(seq_len)[1] if isinstance(objective, objectives.SpanCorruption)
                else seq_len)
  targets = rng.integers(7, vocab, (batch, target_len), dtype=np.int32)
  out = {'input_ids': ids, 'attention_mask': np.ones((batch, seq_len), np.int32),
         'decoder_input_ids': seq2seq.shift_right(targets, 0),
         'decoder_mask': np.ones((batch, target_len), np.int32), 'targets': targets,
         'weights': np.ones((batch, target_len), np.float32)}
  if isinstance(objective, objectives.SpanCorruption):  # every target a dropped text token
    out['span_weights'] = out['weights']
  return out
