"""Hugging Face checkpoint interoperability, kept out of the model code.

  bert.py            BERT (config.json + model.safetensors + vocab.txt / tokenizer.json)
  gpt2.py            GPT-2 (config.json + model.safetensors + vocab.json / merges.txt)
  t5.py              T5 v1.0 / v1.1 (config.json + model.safetensors + tokenizer.json or
                     spiece.model)
  bart.py            BART (config.json + model.safetensors + vocab.json / merges.txt)
  hf_checkpoint.py   reading and writing an HF model directory; the parameter-name mapping rules
  hf_tokenizer.py    WordPiece / byte-level BPE / SentencePiece vocabularies behind our Tokenizer
                     interface
  make_fixtures.py   dev only (torch + transformers): the parity fixtures under tests/fixtures/

An import returns an `Imported` (ModelConfig, params, tokenizer); export writes a directory
that `transformers` loads with `from_pretrained` and that imports back to the same arrays.
"""
from __future__ import annotations

from research.convert import bart, bert, gpt2, t5
from research.convert.hf_checkpoint import ConversionError, Imported, read_config

LOADERS = {'bert': bert.load, 'gpt2': gpt2.load, 't5': t5.load, 'bart': bart.load}
SAVERS = {'bert': bert.save, 'gpt2': gpt2.save, 't5': t5.save, 'bart': bart.save}


def load(directory: str) -> Imported:
  """Imports any supported HF checkpoint, picked by its config.json `model_type`."""
  model_type = read_config(directory).get('model_type')
  if model_type not in LOADERS:
    raise ConversionError(f'{directory}: model_type {model_type!r} is not supported; '
                          f'importable: {", ".join(LOADERS)}')
  return LOADERS[model_type](directory)


def save(directory: str, model_type: str, cfg, params, tokenizer):
  """Exports our (cfg, params, tokenizer) as an HF `model_type` directory; raises
  ConversionError when that format cannot hold this architecture."""
  if model_type not in SAVERS:
    raise ConversionError(f'cannot export as model_type {model_type!r}; exportable: '
                          f'{", ".join(SAVERS)}')
  SAVERS[model_type](directory, cfg, params, tokenizer)
