"""Model assemblies over the one shared transformer Block, chosen by `ModelConfig.arch`.

  encoder          encoder.EncoderLM (BERT; UniLM with masks as data)
  decoder          decoder.Decoder (GPT-1/2/3; prefix LM)
  encoder_decoder  encoder_decoder.EncoderDecoder (T5, BART)

Decoder-bearing models expose `init_cache` / `prefill` / `decode_step`, which is all
generate.py needs.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from research.models.config import ModelConfig
from research.models.decoder import Decoder
from research.models.encoder import EncoderLM
from research.models.encoder_decoder import EncoderDecoder

PRETRAINING_MODELS = {'encoder': EncoderLM, 'decoder': Decoder, 'encoder_decoder': EncoderDecoder}


def build(cfg: ModelConfig) -> nn.Module:
  """The pretraining model of `cfg.arch` (with its LM heads)."""
  return PRETRAINING_MODELS[cfg.arch](cfg)


def init_params(model: nn.Module, rng: jax.Array, length: int = 8):
  """Boxed (logically partitioned) parameters of a `build` model from dummy inputs."""
  ids = jnp.zeros((1, length), jnp.int32)
  if model.cfg.arch == 'encoder_decoder':
    return model.init(rng, ids, ids)['params']
  return model.init(rng, ids)['params']


def abstract_params(cfg: ModelConfig):
  """Unboxed parameter shapes of `build(cfg)` without allocating them (jax.eval_shape)."""
  return jax.eval_shape(lambda: nn.meta.unbox(init_params(build(cfg), jax.random.key(0))))


def param_count(cfg_or_params) -> int:
  """Parameters of `build(cfg)` for a ModelConfig (counted without allocating), or in a
  parameter tree (e.g. a task model's)."""
  tree = abstract_params(cfg_or_params) if isinstance(cfg_or_params, ModelConfig) \
      else cfg_or_params
  return sum(x.size for x in jax.tree.leaves(tree))


def reads_left_to_right(cfg: ModelConfig) -> bool:
  """Whether the model is a left-to-right LM whose logits score a continuation given its
  context (research/incontext.py; GPT-3 Sec 2.4): the decoder."""
  return cfg.arch == 'decoder'
