"""Output heads that sit on a Stack's hidden states."""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.config import ModelConfig
from research.models.layers import ACTIVATIONS, constrain, dense_init, kernel_std, norm
from research.models.vocab_loss import VocabLoss, vocab_cross_entropy


class Pooler(nn.Module):
  """BERT Sec 3: the final hidden state of [CLS] through a tanh layer summarises the input."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, hidden):  # [batch, length, d_model] -> [batch, d_model]
    dense = nn.Dense(self.cfg.d_model, dtype=self.cfg.compute_dtype, name='dense',
                     kernel_init=dense_init(self.cfg.init_std, ('embed', 'mlp')),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)))
    return jnp.tanh(dense(hidden[:, 0]))


class MlmHead(nn.Module):
  """BERT's masked-LM head: dense + activation + LayerNorm, then the input embedding matrix
  (tied) plus a per-token output bias (google-research/bert `get_masked_lm_output`)."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, hidden, decode: Callable[[jax.Array], jax.Array]):
    cfg = self.cfg
    h = nn.Dense(cfg.d_model, dtype=cfg.compute_dtype, name='transform',
                 kernel_init=dense_init(cfg.init_std, ('embed', 'mlp')),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)))(hidden)
    h = norm(cfg, "norm")(ACTIVATIONS[cfg.activation](h))
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, ('vocab',)),
                      (cfg.vocab_size,))
    return vocab_logits(decode(h) + bias)  # [..., vocab]


class ClassifierHead(nn.Module):
  """A linear layer from a summary vector to `num_classes` logits (BERT NSP; fine-tuning)."""
  cfg: ModelConfig
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes, dtype=self.cfg.compute_dtype, name='dense',
                    kernel_init=dense_init(self.cfg.init_std, ('embed', None)),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))(x)


class LmHead(nn.Module):
  """Next-token logits from hidden states [..., d_model] -> [..., vocab].

  Tied (GPT-1 Eq. 2, Press & Wolf 2017; BART, T5 v1.0): the token embedding matrix, which T5
  reads with the hidden state rescaled by d_model**-0.5 (Mesh TensorFlow); untied (T5.1.1):
  a kernel of its own. `loss` scores targets through the same weights without materialising
  the logits (models/vocab_loss.py).
  """
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    if not cfg.tie_output:
      self.kernel = self.param('kernel', dense_init(kernel_std(cfg, cfg.d_model),
                                                    ('embed', 'vocab')),
                               (cfg.d_model, cfg.vocab_size))

  def _input(self, hidden):
    return hidden * self.cfg.d_model ** -0.5 if self.cfg.scale_tied_output else hidden

  def __call__(self, hidden, embeddings: nn.Module):
    if self.cfg.tie_output:
      return vocab_logits(embeddings.attend(self._input(hidden)))
    return vocab_logits(jnp.einsum('...d,dv->...v', hidden,
                                   self.kernel.astype(self.cfg.compute_dtype)))

  def outputs(self, hidden, embeddings: nn.Module, *, logits: bool, vocab_targets=None):
    """What a model returns from its head: (logits or None, VocabLoss or None). Given
    vocab_targets (targets, weights), their scores in place of the logits; else the logits
    if `logits`."""
    if vocab_targets is not None:
      return None, self.loss(hidden, embeddings, *vocab_targets)
    return (self(hidden, embeddings) if logits else None), None

  def loss(self, hidden, embeddings: nn.Module, targets, weights) -> VocabLoss:
    """hidden [batch, length, d_model], targets int / weights [batch, length] -> the weighted
    cross-entropy of the targets under this head's logits, and per-position metrics."""
    kernel = embeddings.table() if self.cfg.tie_output else self.kernel.T  # [vocab, d_model]
    hidden = self._input(hidden).astype(self.cfg.compute_dtype)
    return vocab_cross_entropy(hidden, kernel, targets, weights)


def vocab_logits(logits: jax.Array) -> jax.Array:
  """[batch, length, vocab] logits split by rows and, under tensor parallelism, by vocabulary
  (the loss's log-sum-exp then reduces across 'model'); other ranks are left alone."""
  return constrain(logits, ('batch', 'length', 'vocab')) if logits.ndim == 3 else logits
