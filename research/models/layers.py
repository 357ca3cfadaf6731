"""Embeddings, LayerNorm and the position-wise MLP shared by every model family.

Every parameter carries logical axis names ('vocab', 'embed', 'mlp', 'heads', 'kv') that
`research/sharding.py` maps onto mesh axes; the modules themselves never see a mesh.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.config import ModelConfig

ACTIVATIONS = {
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),  # BERT (Hendrycks & Gimpel 2016)
    'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),  # GPT-1/2's tanh approximation
    'relu': jax.nn.relu,
}


def dense_init(std: float, names: tuple[str, ...]):
  """N(0, std^2) weights (`initializer_range` 0.02 in BERT/GPT-2; BERT truncates at 2 std, immaterial here)."""
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def layer_norm(cfg: ModelConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))


class Embeddings(nn.Module):
  """Token + learned absolute position (+ segment) embeddings (BERT Fig. 2; GPT-1 Sec 3.1).

  `token` is exposed so heads can tie their output projection to it (Press & Wolf 2017).
  """
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.token = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype,
                          embedding_init=dense_init(cfg.init_std, ('vocab', 'embed')))
    self.position = nn.Embed(cfg.max_len, cfg.d_model, dtype=cfg.compute_dtype,
                             embedding_init=dense_init(cfg.init_std, (None, 'embed')))
    if cfg.type_vocab_size:
      self.segment = nn.Embed(cfg.type_vocab_size, cfg.d_model, dtype=cfg.compute_dtype,
                              embedding_init=dense_init(cfg.init_std, (None, 'embed')))
    if cfg.embed_ln:
      self.norm = layer_norm(cfg, 'norm')
    self.dropout = nn.Dropout(self.cfg.dropout)

  def __call__(self, input_ids, positions, segment_ids=None, *, deterministic: bool):
    """input_ids, positions, segment_ids: [batch, length] -> [batch, length, d_model]."""
    x = self.token(input_ids) + self.position(positions)
    if self.cfg.type_vocab_size:
      if segment_ids is None:
        segment_ids = jnp.zeros_like(input_ids)
      x = x + self.segment(segment_ids)
    if self.cfg.embed_ln:
      x = self.norm(x)
    return self.dropout(x, deterministic=deterministic)

  def attend(self, x):
    """Tied output projection: [batch, length, d_model] -> [batch, length, vocab] logits."""
    return self.token.attend(x)


class Mlp(nn.Module):
  """Position-wise feed-forward network, Vaswani et al. 2017 Eq. 2 with GELU."""
  cfg: ModelConfig
  residual_std: float

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    cfg = self.cfg
    h = nn.Dense(cfg.d_ff, dtype=cfg.compute_dtype, name='wi',
                 kernel_init=dense_init(cfg.init_std, ('embed', 'mlp')),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)))(x)
    h = ACTIVATIONS[cfg.activation](h)  # [batch, length, d_ff]
    return nn.Dense(cfg.d_model, dtype=cfg.compute_dtype, name='wo',
                    kernel_init=dense_init(self.residual_std, ('mlp', 'embed')),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))(h)
