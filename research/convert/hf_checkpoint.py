"""An HF model directory (config.json + model.safetensors) and the rules that rename its weights.

A `Rule` pairs one HF tensor with one or more of our parameters and says how to reshape between
them (PyTorch `nn.Linear` stores [out, in], GPT-2's `Conv1D` [in, out] with q, k, v fused; we keep
heads as a separate axis). Every transform is a transpose, reshape or split, so import and export
are exact inverses. Architecture modules (bert.py, gpt2.py) only list their rules.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import flax.traverse_util
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from research.models import scan_layout
from research.models.config import ModelConfig

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'


class ConversionError(ValueError):
  """A checkpoint that cannot be converted; the one-line message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """HF tensor `hf` <-> our parameters `ours` (paths like 'stack/layer_0/mlp/wi/kernel')."""
  hf: str
  ours: tuple[str, ...]
  to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
  to_hf: Callable[..., np.ndarray]


def same(hf: str, ours: str) -> Rule:
  return Rule(hf, (ours,), lambda x: (x,), lambda x: x)


def reshaped(hf: str, ours: str, shape: Sequence[int], hf_shape: Sequence[int]) -> Rule:
  """E.g. a bias [heads * head_dim] <-> [heads, head_dim]."""
  return Rule(hf, (ours,), lambda x: (x.reshape(shape),), lambda x: x.reshape(hf_shape))


def transposed(hf: str, ours: str, shape: Sequence[int], hf_shape: Sequence[int]) -> Rule:
  """A torch nn.Linear weight [out, in] <-> our kernel [in, out], in/out possibly split by head."""
  out_dim, in_dim = hf_shape
  return Rule(hf, (ours,), lambda w: (w.T.reshape(shape),),
              lambda k: k.reshape(in_dim, out_dim).T)


def fused(hf: str, ours: Sequence[str], shape: Sequence[int]) -> Rule:
  """One HF tensor holding several of ours side by side on its last axis (GPT-2's c_attn:
  [d_model, 3 * d_model] = q | k | v), each [..., heads, head_dim] = `shape`."""
  return Rule(hf, tuple(ours),
              lambda x: tuple(p.reshape(shape) for p in np.split(x, len(ours), -1)),
              lambda *parts: np.concatenate([p.reshape(*p.shape[:-2], -1) for p in parts], -1))


@dataclasses.dataclass
class Imported:
  """What an import returns: enough to build, fine-tune or generate with the model."""
  cfg: ModelConfig
  params: dict  # plain (unboxed) float32 arrays, the tree `model.init` makes
  tokenizer: Any  # research.convert.hf_tokenizer.HFTokenizer
  initialized: tuple[str, ...] = ()  # our parameters the checkpoint lacks (fresh initialisation)



def read_config(directory: str) -> dict:
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isdir(directory):
    raise ConversionError(f'{directory} is not a directory; pass an HF model directory '
                          f'({CONFIG_FILE} + {WEIGHTS_FILE} + vocabulary files)')
  if not os.path.exists(path):
    raise ConversionError(f'{path} is missing; an HF model directory needs {CONFIG_FILE} '
                          f'beside {WEIGHTS_FILE}')
  with open(path, encoding='utf-8') as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ConversionError(f'{path} is not valid JSON ({e.msg}, line {e.lineno})') from None


def check_model_type(config: dict, expected: str, directory: str):
  model_type = config.get('model_type')
  if model_type != expected:
    raise ConversionError(
        f'{directory}: model_type {model_type!r} (architectures {config.get("architectures")}) '
        f'is not supported here; this importer reads {expected!r} checkpoints')


def reject_unsupported(unsupported: Sequence[tuple[bool, str]], directory: str):
  """One-line ConversionError for the first (condition, what) of a config this codebase
  cannot represent."""
  for bad, what in unsupported:
    if bad:
      raise ConversionError(f'{directory}: {what} is not supported by this codebase')


def check_vocab_fits(tokenizer_size: int, embedded: int, directory: str):
  """The tokenizer's ids must index the checkpoint's embedding table."""
  if tokenizer_size > embedded:
    raise ConversionError(
        f'{directory}: the vocabulary has {tokenizer_size} tokens but the checkpoint embeds '
        f'only {embedded}; the vocabulary files belong to another model')


def check_special_ids(tokenizer, config: dict, directory: str, **defaults: int):
  """The vocabulary's special ids are the ones config.json names (e.g. pad_token_id=0): a
  vocabulary of the same size from another model would otherwise pass unnoticed."""
  for key, default in defaults.items():
    expected = config.get(key, default)
    role = key.removesuffix('_token_id')
    found = getattr(tokenizer, f'{role}_id')
    if found not in (expected if isinstance(expected, list) else [expected]):
      raise ConversionError(
          f"{directory}: the vocabulary's {role} token has id {found} but {CONFIG_FILE} says "
          f'{key}={expected}; the vocabulary files belong to another model')


def read_weights(directory: str) -> dict[str, np.ndarray]:
  """All tensors of model.safetensors as float32 numpy arrays (bf16/fp16 widened exactly)."""
  path = os.path.join(directory, WEIGHTS_FILE)
  if not os.path.exists(path):
    legacy = os.path.exists(os.path.join(directory, 'pytorch_model.bin'))
    hint = (' (it has pytorch_model.bin: re-save it with transformers `save_pretrained(..., '
            'safe_serialization=True)`)' if legacy else '')
    raise ConversionError(f'{path} is missing{hint}')
  # framework='flax' reads bfloat16 too, which numpy cannot represent natively.
  with safe_open(path, framework='flax') as f:
    return {k: np.asarray(f.get_tensor(k), np.float32) for k in f.keys()}


def apply_rules(weights: dict[str, np.ndarray], rules: Sequence[Rule], template: dict,
                directory: str) -> tuple[dict, tuple[str, ...]]:
  """Our params from HF weights. `template` (model.init's tree, or its shapes) gives the
  expected shapes; returns (params, paths the checkpoint lacks, left as in `template`)."""
  flat = flax.traverse_util.flatten_dict(template, sep='/')
  provided = set()
  for rule in rules:
    if rule.hf not in weights:
      continue
    for path, value in zip(rule.ours, rule.to_ours(weights[rule.hf])):
      if value.shape != flat[path].shape:
        raise ConversionError(
            f'{directory}: {rule.hf} has shape {list(weights[rule.hf].shape)}, which does not fit '
            f'{path} {list(flat[path].shape)} implied by {CONFIG_FILE}; the weights and the '
            'config are from different models')
      flat[path] = np.asarray(value, np.float32)
      provided.add(path)
  absent = tuple(p for p in flat if p not in provided)
  return flax.traverse_util.unflatten_dict(flat, sep='/'), absent


def invert_rules(params: dict, rules: Sequence[Rule]) -> dict[str, np.ndarray]:
  """HF tensors from our params (either layer layout: rules name the unscanned one)."""
  flat = flax.traverse_util.flatten_dict(scan_layout.to_layout(params, False), sep='/')
  return {rule.hf: np.ascontiguousarray(rule.to_hf(*(np.asarray(flat[p]) for p in rule.ours)),
                                        np.float32)
          for rule in rules}


def write_checkpoint(directory: str, config: dict, weights: dict[str, np.ndarray]):
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, CONFIG_FILE), 'w', encoding='utf-8') as f:
    json.dump(config, f, indent=2, sort_keys=True)
    f.write('\n')
  # transformers refuses safetensors files whose metadata does not name a framework.
  save_file(weights, os.path.join(directory, WEIGHTS_FILE), metadata={'format': 'pt'})
