"""Embeddings, norms, the position-wise MLP and T5's relative position bias, for every family.

Every parameter carries logical axis names ('vocab', 'embed', 'mlp', 'heads', 'kv') that
`research/sharding.py` maps onto mesh axes; the modules themselves never see a mesh.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from research import sharding
from research.models.config import ModelConfig
from research.models.masks import relative_position_bucket

ACTIVATIONS = {
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),  # BERT, BART (Hendrycks & Gimpel 2016)
    'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),  # GPT-1/2, T5.1.1's gated-gelu
    'relu': jax.nn.relu,  # T5 v1.0
}


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """Names the logical axes of an activation (e.g. ('batch', 'length', 'act_embed')) so that,
  under sharding.with_rules, XLA keeps it laid out so (batch split over the data axes, heads /
  hidden units over 'model'); a no-op anywhere else (initialisation, generation)."""
  return sharding.constrain_activation(x, names)


# The residual stream [batch, length, d_model]: split by rows, features whole.
RESIDUAL = ('batch', 'length', 'act_embed')


def dense_init(std: float, names: tuple[str | None, ...]):
  """N(0, std^2) weights (`initializer_range` 0.02 in BERT/GPT-2; BERT truncates at 2 std, immaterial here)."""
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def kernel_std(cfg: ModelConfig, fan_in: int) -> float:
  """The std of a kernel with `fan_in` inputs (ModelConfig.init): init_std (BERT Sec A.2 and
  GPT-2's `initializer_range`), or fan_in^-1/2 (Mesh TensorFlow's variance scaling, T5)."""
  return fan_in ** -0.5 if cfg.init == 'fan_in' else cfg.init_std


def zeros_init(names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros, names)


def norm(cfg: ModelConfig, name: str) -> nn.Module:
  """LayerNorm (Ba et al. 2016; BERT, GPT, BART) or RMSNorm (Zhang & Sennrich 2019; T5, whose
  "simplified layer normalization" only rescales, Raffel et al. 2020 Sec 2.1)."""
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ('embed',))
  if cfg.norm == 'rms':
    return nn.RMSNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, name=name,
                      scale_init=scale_init)
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, name=name,
                      scale_init=scale_init, bias_init=zeros_init(('embed',)))


def token_embedding(cfg: ModelConfig, name: str | None = None) -> nn.Embed:
  """The [vocab, d_model] table; `attend` with it is the tied output projection."""
  return nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype, name=name,
                  embedding_init=dense_init(cfg.embed_init_std or cfg.init_std,
                                            ('vocab', 'embed')))


class Dropout(nn.Module):
  """Dropout (Srivastava et al. 2014): zero each value with probability `rate`, scale the rest
  by 1 / (1 - rate), from the 'dropout' rng collection; the identity when deterministic.

  Written here instead of nn.Dropout, which draws one 32-bit threefry word per value: XLA:CPU
  lowers threefry as a rolled 5-round loop that streams the whole array through memory each
  round, and that was ~12% of GPT-mini's step. Two 16-bit draws per word halve it (GPT-mini
  step, one process, three rounds: 853 / 794 / 840 ms with nn.Dropout, 802 / 776 / 766 here,
  731 / 715 / 722 without dropout). The drop probability is `rate` rounded to a multiple of
  2^-16 (0.1 -> 0.100006), and survivors are scaled by that probability's complement, so the
  expectation of every value is kept exactly."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if not 0.0 <= self.rate <= 1.0:
      raise ValueError(f'dropout rate {self.rate} is not a probability; use a value in [0, 1]')
    if deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    threshold = round(self.rate * 2**16)  # drop where the 16-bit draw is below it
    keep_prob = 1.0 - threshold / 2**16
    return jnp.where(uniform_uint16(self.make_rng('dropout'), x.shape) >= threshold,
                     x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype))


def uniform_uint16(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Uniform uint16 of `shape`, two from each 32-bit word jax.random draws (the last axis is
  drawn in pairs, so leading axes keep the sharding of the array they mask)."""
  pairs = -(-shape[-1] // 2)
  words = jax.random.bits(key, (*shape[:-1], pairs), jnp.uint32)  # [..., pairs]
  halves = jax.lax.bitcast_convert_type(words, jnp.uint16)  # [..., pairs, 2]
  return halves.reshape(*shape[:-1], 2 * pairs)[..., :shape[-1]]


class Embeddings(nn.Module):
  """Token (+ learned absolute position) (+ segment) embeddings of one stack's input
  (BERT Fig. 2; GPT-1 Sec 3.1; BART). T5's stacks add no positions here (position='relative').

  `shared` may be a token table owned by the parent (T5 and BART share one between the
  encoder and the decoder, each stack keeping its own positions); by default the module owns
  its table, `token`.
  """
  cfg: ModelConfig
  shared: nn.Module | None = None

  def setup(self):
    cfg = self.cfg
    if self.shared is None:
      self.token = token_embedding(cfg, None)
    if cfg.position == 'learned':
      self.position = nn.Embed(cfg.max_len, cfg.d_model, dtype=cfg.compute_dtype,
                               embedding_init=dense_init(cfg.init_std, (None, 'embed')))
    if cfg.type_vocab_size:
      self.segment = nn.Embed(cfg.type_vocab_size, cfg.d_model, dtype=cfg.compute_dtype,
                              embedding_init=dense_init(cfg.init_std, (None, 'embed')))
    if cfg.embed_ln:
      self.norm = norm(cfg, 'norm')
    self.dropout = Dropout(cfg.dropout)

  @property
  def tokens(self) -> nn.Module:
    return self.token if self.shared is None else self.shared

  def __call__(self, input_ids, positions, segment_ids=None, *, deterministic: bool,
               token_vectors=None):
    """input_ids, positions, segment_ids: [batch, length] -> [batch, length, d_model].
    token_vectors [batch, length, d_model], if given, stand in for the token table's rows:
    XLNet's query stream embeds its learned vector w at every position the way a token is
    embedded (position, segment, LayerNorm), so it starts at the content stream's scale."""
    x = self.tokens(input_ids) if token_vectors is None else token_vectors
    if self.cfg.position == 'learned':
      x = x + self.position(positions)
    if self.cfg.type_vocab_size:
      if segment_ids is None:
        segment_ids = jnp.zeros_like(input_ids)
      x = x + self.segment(segment_ids)
    if self.cfg.embed_ln:
      x = self.norm(x)
    return constrain(self.dropout(x, deterministic=deterministic), RESIDUAL)

  def attend(self, x):
    """Tied output projection: [batch, length, d_model] -> [batch, length, vocab] logits."""
    return self.tokens.attend(x)

  def table(self) -> jax.Array:
    """The token table [vocab, d_model] (float32 parameters), as `attend` reads it."""
    return self.tokens.embedding


class Mlp(nn.Module):
  """Position-wise feed-forward network (Vaswani et al. 2017, Eq. 2): act(x W_i) W_o, or
  gated (Shazeer 2020, GeGLU; T5.1.1): (act(x W_i0) * x W_i1) W_o; with cfg.mlp_dropout (T5)
  the hidden units are dropped before W_o."""
  cfg: ModelConfig
  residual_scale: float = 1.0  # W_o's init std is multiplied by it (GPT-2 Sec 2.3)

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    cfg = self.cfg
    dense = lambda features, std, names, name: nn.Dense(
        features, use_bias=cfg.use_bias, dtype=cfg.compute_dtype, name=name,
        kernel_init=dense_init(std, names), bias_init=zeros_init(names[-1:]))
    act = ACTIVATIONS[cfg.activation]
    wi_std = kernel_std(cfg, cfg.d_model)
    if cfg.mlp == 'gated':
      h = act(dense(cfg.d_ff, wi_std, ('embed', 'mlp'), 'wi_0')(x)) * dense(
          cfg.d_ff, wi_std, ('embed', 'mlp'), 'wi_1')(x)  # [batch, length, d_ff]
    else:
      h = act(dense(cfg.d_ff, wi_std, ('embed', 'mlp'), 'wi')(x))  # [batch, length, d_ff]
    h = constrain(h, ('batch', 'length', 'mlp'))  # Megatron: hidden units split over 'model'
    if cfg.mlp_dropout:
      h = Dropout(cfg.dropout)(h, deterministic=deterministic)
    wo_std = kernel_std(cfg, cfg.d_ff) * self.residual_scale
    return dense(cfg.d_model, wo_std, ('mlp', 'embed'), 'wo')(h)


class RelativePositionBias(nn.Module):
  """T5's learned scalar per (bucket, head), added to the attention logits of every layer of
  one stack (computed once per stack; Raffel et al. 2020, Sec 2.1)."""
  cfg: ModelConfig
  bidirectional: bool

  @nn.compact
  def __call__(self, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
    """q_positions [batch|1, queries], k_positions [batch|1, keys] -> bias
    [batch|1, heads, queries, keys] (float32)."""
    cfg = self.cfg
    # Mesh TensorFlow / HF T5 draw the table at d_model^-1/2 (not a fan-in: it has none).
    std = cfg.d_model ** -0.5 if cfg.init == 'fan_in' else cfg.init_std
    table = self.param('embedding', dense_init(std, (None, 'heads')),
                       (cfg.relative_buckets, cfg.num_heads))
    buckets = relative_position_bucket(
        k_positions[:, None, :] - q_positions[:, :, None], bidirectional=self.bidirectional,
        num_buckets=cfg.relative_buckets, max_distance=cfg.relative_max_distance)
    bias = jnp.take(table, buckets, axis=0)  # [batch|1, queries, keys, heads]
    return bias.transpose(0, 3, 1, 2).astype(jnp.float32)
