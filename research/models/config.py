"""The one architecture description shared by every model family.

Encoder (BERT), decoder (GPT-1/2/3) and their variants differ only in these switches and in
the attention mask the model builds (see attention.py). `configs/base.py` holds the same
fields as an ml_collections ConfigDict; `ModelConfig.from_config` turns it into this frozen,
hashable dataclass so modules can be jitted with it as a static attribute.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  max_len: int  # size of the learned position table
  d_model: int
  num_layers: int
  num_heads: int
  d_ff: int
  type_vocab_size: int = 0  # >0: BERT segment (token type) embeddings
  dropout: float = 0.1
  attention_dropout: float = 0.1
  # Layer-norm placement. BERT and GPT-1: post-LN (Vaswani et al. 2017, Sec 3.1).
  # GPT-2: pre-LN plus a final LayerNorm (GPT-2 paper, Sec 2.3).
  pre_ln: bool = False
  final_ln: bool = False
  embed_ln: bool = False  # BERT normalises the summed embeddings; GPT does not.
  layer_norm_eps: float = 1e-12
  activation: str = 'gelu'  # 'gelu' (exact erf, BERT) or 'gelu_tanh' (GPT-1/2 approximation)
  init_std: float = 0.02
  # GPT-2 Sec 2.3: scale residual-projection init by 1/sqrt(N) with N the number of residual
  # layers, i.e. std / sqrt(2 * num_layers).
  scaled_residual_init: bool = False
  # GPT-3 Sec 2.1: "alternating dense and locally banded sparse attention patterns".
  # 0 = all layers dense; w > 0 = odd layers attend only to the previous w positions.
  local_window: int = 0
  dtype: str = 'float32'  # compute dtype; parameters stay float32
  remat: bool = False  # rematerialise each block in the backward pass (saves activation memory)

  @classmethod
  def from_config(cls, model_cfg: Any, vocab_size: int | None = None) -> 'ModelConfig':
    """Builds from `config.model`, ignoring keys that describe the run, not the network."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in model_cfg.items() if k in fields}
    if vocab_size is not None:
      values['vocab_size'] = vocab_size
    return cls(**values)

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def is_local_layer(self, layer: int) -> bool:
    return self.local_window > 0 and layer % 2 == 1

  def check_length(self, length: int):
    if length > self.max_len:
      raise ValueError(f"sequence length {length} exceeds the model's {self.max_len} positions; "
                       'lower --config.data.max_seq_len or raise --config.model.max_len')

  def __post_init__(self):
    if self.d_model % self.num_heads:
      raise ValueError(f'd_model={self.d_model} is not divisible by num_heads={self.num_heads}; '
                       'pick a head count that divides it')
    if self.activation not in ('gelu', 'gelu_tanh', 'relu'):
      raise ValueError(f"unknown activation {self.activation!r}; use 'gelu', 'gelu_tanh' or 'relu'")
