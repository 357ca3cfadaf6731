"""The two parameter layouts of a Stack, and conversion between them.

Unscanned (the default, and the layout of every HF import and export):

  stack/layer_0/attention/query/kernel   [d_model, heads, head_dim]
  stack/layer_1/attention/query/kernel   ...

Scanned (`ModelConfig.scan_layers`, transformer.Stack under `nn.scan`):

  stack/layers/attention/query/kernel    [layers, d_model, heads, head_dim]

`to_layout(params, scan)` converts a whole parameter tree, whatever the model (every Stack in
it: BERT's `encoder/stack`, GPT's `stack`, T5's `encoder` and `decoder`, a task model's
backbone), by stacking or splitting the `layer_{i}` subtrees along a new leading axis. It is
exact (no arithmetic), so HF conversion, `loading.load_params` and checkpoints of either
layout meet at the unscanned layout.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SCANNED = 'layers'
_LAYER = re.compile(r'layer_(\d+)$')


def is_scanned(params: Any) -> bool:
  """Whether any Stack in `params` is in the scanned layout."""
  if not isinstance(params, dict):
    return False
  return SCANNED in params or any(is_scanned(v) for v in params.values())


def _stack(layers: list, as_numpy: bool):
  concat = np.stack if as_numpy else jnp.stack
  return jax.tree.map(lambda *xs: concat(xs), *layers)


def _is_numpy(tree) -> bool:
  return all(isinstance(x, np.ndarray) for x in jax.tree.leaves(tree))


def scan(params: dict) -> dict:
  """Unscanned -> scanned: every dict holding layer_0 .. layer_{n-1} gets one `layers` entry
  whose leaves are the layers' leaves stacked on a new axis 0 (numpy stays numpy)."""
  if not isinstance(params, dict):
    return params
  indices = sorted(int(m.group(1)) for m in map(_LAYER.match, params) if m)
  out = {k: scan(v) for k, v in params.items() if not _LAYER.match(k)}
  if indices:
    if indices != list(range(len(indices))):
      raise ValueError(f'layers {indices} are not numbered 0..{len(indices) - 1}; cannot stack')
    if SCANNED in out:
      raise ValueError(f'a stack holds both layer_{{i}} and {SCANNED!r} parameters')
    layers = [params[f'layer_{i}'] for i in indices]
    out[SCANNED] = _stack(layers, _is_numpy(layers))
  return out


def unscan(params: dict) -> dict:
  """Scanned -> unscanned: every `layers` entry becomes layer_0 .. layer_{n-1}."""
  if not isinstance(params, dict):
    return params
  out = {k: unscan(v) for k, v in params.items() if k != SCANNED}
  if SCANNED in params:
    stacked = params[SCANNED]
    count = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(count):
      out[f'layer_{i}'] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return out


def to_layout(params: dict, scanned: bool) -> dict:
  """`params` in the scanned (True) or unscanned (False) layout, converting only if needed."""
  if scanned == is_scanned(params):
    return params
  return scan(params) if scanned else unscan(params)
