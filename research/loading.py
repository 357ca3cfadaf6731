"""Loading a trained model is one call: `load_params(directory) -> (ModelConfig, params, tokenizer)`.

`directory` is a training workdir of this codebase or a Hugging Face model directory
(config.json + model.safetensors + its vocabulary files, imported by research/convert).
A workdir's newest (or chosen) checkpoint is read by an Orbax *partial* restore of the
parameters alone: no optimizer state, no corpus, no rebuilt training run. Generation,
in-context evaluation and fine-tuning all start here.

A workdir describes itself: `model.json` (the resolved ModelConfig), its tokenizer
(`tokenizer.model`, the path config.json names, or an imported vocabulary in
`hf_tokenizer/`) and `checkpoints/`.
"""
from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import jax
from jax.sharding import Mesh

from research import checkpointing, models, state
from research.models import scan_layout
from research.models.config import ModelConfig

MODEL_FILE = 'model.json'
HF_TOKENIZER_DIR = 'hf_tokenizer'  # an imported checkpoint's vocabulary, kept in a workdir
WEIGHTS_FILE = 'model.safetensors'  # research.convert.hf_checkpoint's; a HF directory has it


class Loaded(NamedTuple):
  cfg: ModelConfig
  params: Any  # the tree of models.build(cfg), unboxed arrays
  tokenizer: Any  # research.data.tokenizer.Tokenizer interface
  step: int  # checkpoint step (0 for an imported HF checkpoint)


def is_hf_directory(path: str) -> bool:
  return os.path.exists(os.path.join(path, WEIGHTS_FILE))


def write_model_config(workdir: str, cfg: ModelConfig):
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, MODEL_FILE), 'w', encoding='utf-8') as f:
      json.dump(cfg.to_dict(), f, indent=2, sort_keys=True)
      f.write('\n')


def read_model_config(workdir: str) -> ModelConfig:
  path = os.path.join(workdir, MODEL_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} not found: expected a training workdir of this codebase (with {MODEL_FILE}, '
        f'its tokenizer and checkpoints/) or an HF model directory (with {WEIGHTS_FILE})')
  with open(path, encoding='utf-8') as f:
    return ModelConfig(**json.load(f))


def tokenizer_path(workdir: str, configured: str = '') -> str:
  """The SentencePiece model of a workdir, by one rule for training, fine-tuning and loading:
  `configured` (config.data.tokenizer.path), else the path the workdir's config.json names,
  else <workdir>/tokenizer.model."""
  if configured:
    return configured
  config_path = os.path.join(workdir, 'config.json')
  if os.path.exists(config_path):
    with open(config_path, encoding='utf-8') as f:
      recorded = json.load(f).get('data', {}).get('tokenizer', {}).get('path')
    if recorded:
      return recorded
  return os.path.join(workdir, 'tokenizer.model')


def load_tokenizer(workdir: str):
  from research.convert.hf_tokenizer import HFTokenizer  # only for imported vocabularies
  from research.data.tokenizer import Tokenizer
  if os.path.isdir(os.path.join(workdir, HF_TOKENIZER_DIR)):
    return HFTokenizer.load_saved(os.path.join(workdir, HF_TOKENIZER_DIR))
  path = tokenizer_path(workdir)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: the tokenizer of {workdir} is missing')
  return Tokenizer.load(path)


def _restore_target(cfg: ModelConfig, mesh: Mesh | None = None):
  """ShapeDtypeStructs (with shardings) of models.build(cfg)'s params."""
  return state.abstract_params(lambda rng: models.init_params(models.build(cfg), rng), mesh)


def load_params(path: str, step: int | None = None, mesh: Mesh | None = None, *,
                scan_layers: bool | None = None) -> Loaded:
  """(ModelConfig, params, tokenizer, step) of a workdir's checkpoint `step` (default: the
  newest) or of an HF model directory, params placed per `mesh` (default: one device).

  `scan_layers` picks the parameter layout of the result (models/scan_layout.py; None: as
  saved, which is unscanned for HF directories); the returned cfg says which it is."""
  if is_hf_directory(path):
    from research import convert  # transformers-format I/O only when asked for
    imported = convert.load(path)
    cfg, params, tokenizer, step = imported.cfg, imported.params, imported.tokenizer, 0
    if mesh is not None and scan_layers in (None, cfg.scan_layers):
      params = jax.device_put(params, _shardings(_restore_target(cfg, mesh)))
  else:
    # Training writes model.json before its first checkpoint: without it, nothing is trained.
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, MODEL_FILE)):
      raise checkpointing.CheckpointError(
          f'no checkpoint in {path}/checkpoints; train first or point at a trained run (a '
          f'workdir of this codebase, or an HF model directory with {WEIGHTS_FILE})')
    cfg = read_model_config(path)
    tokenizer = load_tokenizer(path)
    ckpt = checkpointing.Checkpointer(os.path.join(path, 'checkpoints'), keep=1)
    try:
      step = ckpt.latest_step() if step is None else step
      if step is None:
        raise checkpointing.CheckpointError(f'no checkpoint in {path}/checkpoints; train first '
                                            'or point at a trained run')
      params = ckpt.restore_params(_restore_target(cfg, mesh), step)
    finally:
      ckpt.close()
  if scan_layers is not None and scan_layers != cfg.scan_layers:
    cfg = cfg.replace(scan_layers=scan_layers)
    params = jax.device_put(scan_layout.to_layout(params, scan_layers),
                            _shardings(_restore_target(cfg, mesh)))
  return Loaded(cfg, params, tokenizer, step)


def _shardings(abstract):
  return jax.tree.map(lambda x: x.sharding, abstract)
