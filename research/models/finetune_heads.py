"""What fine-tuning puts between a pretrained stack and its linear output layer.

BERT (Sec 4, Fig. 4) and GPT-1 (Sec 3.2-3.3, Fig. 1) both add a single linear layer
(`heads.ClassifierHead`); they differ in which state summarises the input: BERT's pooled [CLS]
state (heads.Pooler), GPT-1's state at the last token (`last_token`). BERT Table 5's last row
adds a randomly initialised BiLSTM (`BiLstm`) on top of a left-to-right model during
fine-tuning, to give its token states some right context.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def last_token(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
  """GPT-1 Sec 3.3: the final state h_l^m of the last real (extract) token, the only position
  whose causal context is the whole input. hidden [N, L, D], right-padded mask [N, L] -> [N, D].
  An all-padding row (a missing multiple-choice candidate) reads position 0."""
  last = jnp.maximum(jnp.sum(attention_mask, axis=-1) - 1, 0)  # [N]
  return jnp.take_along_axis(hidden, last[:, None, None].astype(jnp.int32), axis=1)[:, 0]


class BiLstm(nn.Module):
  """BERT Sec 5.1, Table 5 "+ BiLSTM": a randomly initialised bidirectional LSTM over the
  hidden states, trained only during fine-tuning.

  Returns per-token outputs [N, L, 2F] (forward and backward states concatenated) and a
  sequence summary [N, 2F]: the forward LSTM's state after the last real token and the
  backward LSTM's state after the first, which together have read the whole input.
  """
  features: int  # F, per direction
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: jax.Array, attention_mask: jax.Array):
    lengths = jnp.sum(attention_mask, axis=-1).astype(jnp.int32)  # [N]; right padding
    rnn = lambda name: nn.RNN(nn.OptimizedLSTMCell(self.features, dtype=self.dtype), name=name)
    (forward_carry, backward_carry), outputs = nn.Bidirectional(
        rnn('forward'), rnn('backward'), return_carry=True)(hidden, seq_lengths=lengths)
    # An LSTM carry is (cell, hidden); the summary uses the hidden states.
    summary = jnp.concatenate([forward_carry[1], backward_carry[1]], axis=-1)  # [N, 2F]
    return outputs, summary
