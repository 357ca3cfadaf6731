"""Hugging Face checkpoint interoperability, kept out of the model code.

  bert.py            BERT (config.json + model.safetensors + vocab.txt / tokenizer.json)
  gpt2.py            GPT-2 (config.json + model.safetensors + vocab.json / merges.txt)
  hf_checkpoint.py   reading and writing an HF model directory; the parameter-name mapping rules
  hf_tokenizer.py    WordPiece / byte-level BPE vocabularies behind our Tokenizer interface
  make_fixtures.py   dev only (torch + transformers): the parity fixtures under tests/fixtures/

An import returns an `Imported` (ModelConfig, params, tokenizer); export writes a directory
that `transformers` loads with `from_pretrained` and that imports back to the same arrays.
"""
from __future__ import annotations

from research.convert import bert, gpt2
from research.convert.hf_checkpoint import ConversionError, Imported, read_config

LOADERS = {'bert': bert.load, 'gpt2': gpt2.load}


def load(directory: str) -> Imported:
  """Imports any supported HF checkpoint, picked by its config.json `model_type`."""
  model_type = read_config(directory).get('model_type')
  if model_type not in LOADERS:
    raise ConversionError(f'{directory}: model_type {model_type!r} is not supported; '
                          f'importable: {", ".join(LOADERS)}')
  return LOADERS[model_type](directory)
