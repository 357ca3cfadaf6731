"""The one architecture description shared by every model family.

The config names the architecture: `arch` decides what is built (models/__init__.py `build`),
and BERT, GPT-1/2/3, T5 and BART differ only in these switches and in the attention masks
their assembly builds (masks.py). Nothing anywhere branches on an objective's name to choose a
model. `configs/base.py` holds the same fields as an ml_collections ConfigDict;
`ModelConfig.from_config` turns it into this frozen, hashable dataclass so modules can be
jitted with it as a static attribute.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

ARCHS = ('encoder', 'decoder', 'encoder_decoder')
POSITIONS = ('learned', 'relative', 'none')
NORMS = ('layer', 'rms')
MLPS = ('dense', 'gated')
ACTIVATION_NAMES = ('gelu', 'gelu_tanh', 'relu')
# How kernels are initialised (layers.kernel_std): 'normal' N(0, init_std^2) for every kernel
# (BERT, GPT, BART), or 'fan_in' N(0, 1/fan_in) (T5: Mesh TensorFlow's variance scaling).
INITS = ('normal', 'fan_in')
# What the backward pass keeps of each block (jax.checkpoint policies, transformer.py):
# everything ('none': no rematerialisation), only the block's input ('full'), or the outputs
# of matmuls (all of them, or those without batch dimensions, i.e. not attention's).
REMAT_POLICIES = ('none', 'full', 'dots_saveable', 'dots_with_no_batch_dims_saveable')
# Keys of `config.model` that describe where the fields came from, not the network.
_RUN_KEYS = ('size',)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  max_len: int  # learned position table size; with relative/no positions, the longest input
  d_model: int
  num_layers: int  # the stack of `encoder` / `decoder`; the encoder's in `encoder_decoder`
  num_heads: int
  d_ff: int
  # What is built: a bidirectional `encoder` (BERT), a causal `decoder` (GPT), or an
  # `encoder_decoder` (T5, BART) whose decoder cross-attends to the encoder's output.
  arch: str = 'encoder'
  num_decoder_layers: int = 0  # encoder_decoder: decoder depth; 0 = num_layers
  # encoder_decoder: one Stack serves as encoder and decoder (T5 Sec 3.2.2, Table 2 "shared":
  # P parameters at the cost of the 2P model); the decoder adds only its cross-attention.
  share_stacks: bool = False
  # The token an encoder_decoder's decoder starts from: 'pad' (T5) or 'eos' (BART), as the
  # reference implementations (HF `decoder_start_token_id`).
  decoder_start: str = 'pad'
  d_head: int = 0  # per-head width; 0 = d_model // num_heads (T5-3B/11B use 128 at d_model 1024)
  # Positions: 'learned' absolute table (BERT, GPT, BART), 'relative' T5 bucketed bias shared
  # by the layers of a stack (Raffel et al. 2020, Sec 2.1), or 'none'.
  position: str = 'learned'
  relative_buckets: int = 32  # T5: 32 buckets ...
  relative_max_distance: int = 128  # ... logarithmic up to distance 128
  type_vocab_size: int = 0  # >0: BERT segment (token type) embeddings
  dropout: float = 0.1
  attention_dropout: float = 0.1
  # T5 also drops (at `dropout`) the MLP's hidden units between the activation and wo (Mesh
  # TensorFlow `dense_relu_dense`, HF T5DenseActDense) and each stack's output after its final
  # norm (HF T5Stack); BERT, GPT and BART do neither.
  mlp_dropout: bool = False
  final_dropout: bool = False
  # Norm placement. BERT, GPT-1 and BART: post-LN (Vaswani et al. 2017, Sec 3.1).
  # GPT-2/3 and T5: pre-LN plus a final norm (GPT-2 Sec 2.3; T5 Sec 2.1).
  pre_ln: bool = False
  final_ln: bool = False
  embed_ln: bool = False  # BERT and BART normalise the summed embeddings; GPT and T5 do not.
  norm: str = 'layer'  # 'layer' (LayerNorm) or 'rms' (T5: scale only, no mean, no bias)
  layer_norm_eps: float = 1e-12
  use_bias: bool = True  # biases in attention and MLP projections (T5 has none)
  mlp: str = 'dense'  # 'dense' (two layers) or 'gated' (T5.1.1 GeGLU, Shazeer 2020)
  activation: str = 'gelu'  # 'gelu' (exact erf, BERT) or 'gelu_tanh' (GPT-1/2), 'relu' (T5 v1.0)
  # Divide q.k by sqrt(head_dim) (Vaswani et al. Eq. 1). T5 does not: Mesh TensorFlow folds
  # the factor into the query initialisation instead (done here too when False).
  attention_scale: bool = True
  tie_output: bool = True  # LM logits from the token embedding matrix (Press & Wolf 2017)
  scale_tied_output: bool = False  # T5: tied logits use hidden * d_model**-0.5
  init_std: float = 0.02
  # Kernel initialisation (INITS). 'fan_in' is Mesh TensorFlow's, which T5 uses (HF
  # `T5PreTrainedModel._init_weights`): std fan_in^-1/2 for every kernel (q, k, v: d_model;
  # the attention output: heads * d_kv; MLP wi: d_model, wo: d_ff), with the query further
  # divided by sqrt(d_kv) when the logits are not (attention_scale=False), the relative
  # position bias table d_model^-1/2; embed_init_std sets the embeddings (T5: 1.0).
  init: str = 'normal'
  # Token embedding init std; 0 = init_std. T5 draws its shared embedding from N(0, 1) (Mesh
  # TensorFlow), which its d_model**-0.5 tied-output rescale assumes: at 0.02 the initial
  # logits are ~50x smaller and the tiny models barely learn (measured: loss 5.9 after 400 steps).
  embed_init_std: float = 0.0
  # GPT-2 Sec 2.3: scale residual-projection init by 1/sqrt(N) with N the number of residual
  # layers, i.e. std / sqrt(2 * num_layers).
  scaled_residual_init: bool = False
  # GPT-3 Sec 2.1: "alternating dense and locally banded sparse attention patterns".
  # 0 = all layers dense; w > 0 = odd layers attend only to the previous w positions.
  local_window: int = 0
  # XLNet (Yang et al. 2019, Sec 2.3): an encoder that can also run the query stream (a
  # learned start vector, attending strictly earlier tokens of a factorization order).
  two_stream: bool = False
  dtype: str = 'float32'  # compute dtype; parameters stay float32
  # How the stack runs, not what it computes (outputs are the same either way):
  # `remat_policy` (REMAT_POLICIES) rematerialises blocks in the backward pass to save
  # activation memory; `remat=True` is the older spelling of remat_policy='full'.
  remat: bool = False
  remat_policy: str = 'none'
  # One `nn.scan` over the layers instead of a Python loop: compile time and program size stay
  # flat in depth (as t5x and MaxText do). Parameters then carry a leading 'layers' axis
  # (`stack/layers/...` instead of `stack/layer_{i}/...`); models/scan_layout.py converts.
  scan_layers: bool = False

  @classmethod
  def from_config(cls, model_cfg: Any, vocab_size: int | None = None) -> 'ModelConfig':
    """Builds from `config.model`: the preset `size` names (presets.py), then every field
    that is set (not None; vocab_size 0 = unset) on top. A key that is not a field (a typo,
    or a field of another version of this code) is an error rather than silently ignored."""
    from research.models import presets  # pylint: disable=g-import-not-at-top (presets -> config)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in model_cfg.keys() if k not in fields and k not in _RUN_KEYS)
    if unknown:
      raise ValueError(f'unknown model field(s) {", ".join(unknown)}; ModelConfig has '
                       f'{", ".join(sorted(fields))}')
    values = presets.architecture(model_cfg['size']) if model_cfg.get('size') else {}
    values.update({k: v for k, v in model_cfg.items()
                   if k in fields and v is not None and not (k == 'vocab_size' and not v)})
    if vocab_size is not None:
      values['vocab_size'] = vocab_size
    return cls(**values)

  def replace(self, **changes) -> 'ModelConfig':
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @property
  def head_dim(self) -> int:
    return self.d_head or self.d_model // self.num_heads

  @property
  def decoder_layers(self) -> int:
    """Depth of the decoder stack of an encoder_decoder."""
    return self.num_decoder_layers or self.num_layers

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def has_encoder(self) -> bool:
    return self.arch in ('encoder', 'encoder_decoder')


  @property
  def remat_mode(self) -> str:
    """The effective REMAT_POLICIES entry (`remat=True` alone means 'full')."""
    if self.remat_policy == 'none' and self.remat:
      return 'full'
    return self.remat_policy

  def is_local_layer(self, layer: int) -> bool:
    return self.local_window > 0 and layer % 2 == 1

  def check_length(self, length: int, what: str = 'sequence'):
    if length <= self.max_len:
      return
    if self.position == 'learned':
      raise ValueError(f"{what} length {length} exceeds the model's {self.max_len} positions; "
                       'lower --config.data.max_seq_len or raise --config.model.max_len (the '
                       'learned position table)')
    raise ValueError(f'{what} length {length} exceeds the configured maximum of '
                     f'{self.max_len} tokens ({self.position} positions have no table); lower '
                     '--config.data.max_seq_len or raise --config.model.max_len')

  def __post_init__(self):
    choices = {'arch': ARCHS, 'position': POSITIONS, 'norm': NORMS, 'mlp': MLPS,
               'activation': ACTIVATION_NAMES, 'decoder_start': ('pad', 'eos'), 'init': INITS,
               'remat_policy': REMAT_POLICIES}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f'unknown --config.model.{name}={getattr(self, name)!r}; use one of '
                         f'{", ".join(allowed)}')
    if not self.d_head and self.d_model % self.num_heads:
      raise ValueError(f'd_model={self.d_model} is not divisible by num_heads={self.num_heads}; '
                       'pick a head count that divides it (or set --config.model.d_head)')
    if self.local_window and self.arch != 'decoder':
      raise ValueError('--config.model.local_window (GPT-3 banded attention) needs '
                       "arch='decoder'")
    if self.share_stacks and (self.arch != 'encoder_decoder'
                              or self.decoder_layers != self.num_layers):
      raise ValueError('--config.model.share_stacks needs an encoder_decoder whose stacks have '
                       'the same depth (num_decoder_layers 0 or = num_layers)')
    if self.two_stream and (self.arch != 'encoder' or self.position != 'learned'):
      raise ValueError('--config.model.two_stream (XLNet) needs an encoder with learned '
                       'positions')
    if self.scale_tied_output and not self.tie_output:
      raise ValueError('--config.model.scale_tied_output needs tie_output=True')
    for name in ('dropout', 'attention_dropout'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f'--config.model.{name}={getattr(self, name)} is not a probability; '
                         'use a value in [0, 1]')
