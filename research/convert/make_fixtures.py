"""Dev only: writes the HF parity fixtures under tests/fixtures/ (needs torch and transformers).

  pip install torch==2.13.0 transformers      # not part of the package or of CI
  python -m research.convert.make_fixtures

For BERT and GPT-2 it trains a tiny vocabulary on the vendored Austen text (WordPiece, ~100
tokens; byte-level BPE, 300 tokens), builds a random-init tiny transformers model (2 layers,
d_model 32, 4 heads) whose every parameter, LayerNorms and biases included, is perturbed so
that a swapped or transposed tensor cannot go unnoticed, and saves it with `save_pretrained`
plus `reference.npz`: inputs, every hidden state and the logits, and the HF tokenizer's ids
for sample texts. tests/test_convert.py compares research.convert's imports against them
without torch.

It then checks the export direction once, with the real library: import with research.convert,
export to a temporary directory, reload that with transformers and compare outputs.
"""
from __future__ import annotations

import gzip
import itertools
import os
import tempfile

import numpy as np
import torch
import transformers
from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer

from research.convert import bert, gpt2
from research.data.corpus import default_corpus_path

FIXTURES = os.path.join(os.path.dirname(__file__), '..', '..', 'tests', 'fixtures')
SAMPLES = ['It is a truth universally acknowledged, that a single man [MASK] a fortune.',
           'Émma Woodhouse, handsome, clever, and rich!  £20,000\tper annum...']
TINY = dict(layers=2, d_model=32, heads=4, d_ff=64, positions=64)


def austen_lines(n: int = 2000) -> list[str]:
  with gzip.open(default_corpus_path(), 'rt', encoding='utf-8') as f:
    return [line.strip() for line in itertools.islice(f, n) if line.strip()]


def perturb(model: torch.nn.Module, seed: int):
  """Random values everywhere: HF initialises LayerNorms to 1/0 and biases to 0, which would
  let a LayerNorm or bias mapped to the wrong place pass a parity test."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen) * 0.1
      p.copy_(1 + noise if name.endswith('LayerNorm.weight') or '.ln_' in name else
              p + noise if p.ndim > 1 else noise)


def tokenizer_reference(hf_tokenizer) -> dict[str, np.ndarray]:
  ids = [hf_tokenizer(s, add_special_tokens=False)['input_ids'] for s in SAMPLES]
  width = max(map(len, ids))
  return {'sample_texts': np.array(SAMPLES),
          'sample_ids': np.array([i + [-1] * (width - len(i)) for i in ids], np.int32),
          'sample_decoded': np.array([hf_tokenizer.decode(i, skip_special_tokens=True)
                                      for i in ids])}


def make_bert(directory: str) -> str:
  os.makedirs(directory, exist_ok=True)
  wordpiece = BertWordPieceTokenizer(lowercase=True)
  wordpiece.train_from_iterator(austen_lines(), vocab_size=100, limit_alphabet=40,
                                show_progress=False)
  wordpiece.save_model(directory)  # vocab.txt
  tok = transformers.BertTokenizer(vocab=os.path.join(directory, 'vocab.txt'))
  tok.save_pretrained(directory)  # + tokenizer.json, tokenizer_config.json
  config = transformers.BertConfig(
      vocab_size=tok.vocab_size, hidden_size=TINY['d_model'], num_hidden_layers=TINY['layers'],
      num_attention_heads=TINY['heads'], intermediate_size=TINY['d_ff'],
      max_position_embeddings=TINY['positions'], type_vocab_size=2, hidden_act='gelu')
  torch.manual_seed(0)
  model = transformers.BertForPreTraining(config).eval()
  perturb(model, 0)
  model.save_pretrained(directory)
  # Row 1 is right-padded: its padded positions must not change the real ones.
  enc = tok(['miss bennet, said he, is not at home.', 'she is not!'], ['he smiled.', 'no.'],
            padding=True, return_tensors='pt')
  with torch.no_grad():
    out = model(**enc, output_hidden_states=True)
    pooled = model.bert(**enc).pooler_output
  np.savez_compressed(
      os.path.join(directory, 'reference.npz'), input_ids=enc['input_ids'].numpy(),
      segment_ids=enc['token_type_ids'].numpy(), attention_mask=enc['attention_mask'].numpy(),
      hidden_states=torch.stack(out.hidden_states).numpy(), pooled=pooled.numpy(),
      mlm_logits=out.prediction_logits.numpy(), nsp_logits=out.seq_relationship_logits.numpy(),
      **tokenizer_reference(tok))
  return directory


def make_gpt2(directory: str) -> str:
  os.makedirs(directory, exist_ok=True)
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(austen_lines(), vocab_size=300, special_tokens=['<|endoftext|>'],
                          show_progress=False)
  bpe.save_model(directory)  # vocab.json, merges.txt
  tok = transformers.GPT2Tokenizer(vocab=os.path.join(directory, 'vocab.json'),
                                   merges=os.path.join(directory, 'merges.txt'))
  tok.save_pretrained(directory)
  config = transformers.GPT2Config(
      vocab_size=len(tok), n_embd=TINY['d_model'], n_layer=TINY['layers'], n_head=TINY['heads'],
      n_inner=TINY['d_ff'], n_positions=TINY['positions'], activation_function='gelu_new',
      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
  torch.manual_seed(1)
  model = transformers.GPT2LMHeadModel(config).eval()
  perturb(model, 1)
  model.save_pretrained(directory)
  texts = ['Mr. Darcy walked off; and Elizabeth remained', 'with no very cordial feelings.']
  ids = torch.tensor([tok(t)['input_ids'][:10] for t in texts])  # GPT-2 has no padding token
  with torch.no_grad():
    out = model(ids, output_hidden_states=True)
  np.savez_compressed(os.path.join(directory, 'reference.npz'), input_ids=ids.numpy(),
                      hidden_states=torch.stack(out.hidden_states).numpy(),
                      logits=out.logits.numpy(), **tokenizer_reference(tok))
  return directory


def check_export(directory: str, module, hf_class):
  """research.convert import -> export -> transformers reload gives the original outputs."""
  imported = module.load(directory)
  ref = np.load(os.path.join(directory, 'reference.npz'))
  with tempfile.TemporaryDirectory() as out:
    module.save(out, imported.cfg, imported.params, imported.tokenizer)
    model = hf_class.from_pretrained(out).eval()
    kwargs = ({'token_type_ids': torch.tensor(ref['segment_ids']),
               'attention_mask': torch.tensor(ref['attention_mask'])}
              if 'segment_ids' in ref else {})
    with torch.no_grad():
      out = model(torch.tensor(ref['input_ids']), output_hidden_states=True, **kwargs)
  diff = np.abs(torch.stack(out.hidden_states).numpy() - ref['hidden_states']).max()
  print(f'{os.path.basename(directory)}: exported and reloaded by transformers, '
        f'hidden states max |diff| {diff:.2e}')
  assert diff == 0, diff


def main():
  bert_dir = make_bert(os.path.join(FIXTURES, 'hf_bert_tiny'))
  gpt2_dir = make_gpt2(os.path.join(FIXTURES, 'hf_gpt2_tiny'))
  check_export(bert_dir, bert, transformers.BertForPreTraining)
  check_export(gpt2_dir, gpt2, transformers.GPT2LMHeadModel)
  total = sum(os.path.getsize(os.path.join(d, f)) for d in (bert_dir, gpt2_dir)
              for f in os.listdir(d))
  print(f'fixtures: {total / 1024:.0f} KiB under {os.path.normpath(FIXTURES)}')


if __name__ == '__main__':
  main()
