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

The encoder-decoders do the same: T5 v1.0 (tied, ReLU) and T5.1.1 (GeGLU, untied lm_head, a
deeper decoder, wider heads than d_model / heads, fewer buckets) with a SentencePiece unigram
model of 200 pieces + 100 sentinels, and BART with a 300-token byte-level BPE and its five
specials. Their `reference.npz` holds every encoder and decoder hidden state and the logits for
fixed (padded) sources and targets, and 8 greedy tokens per source decoded by repeated full
forward passes (no cache), which the cached generation of research/generate.py must equal.

  python -m research.convert.make_fixtures [t5 t5v11 bart bart_cls bert gpt2]   # default: all

It then checks the export direction once, with the real library: import with research.convert,
export to a temporary directory, reload that with transformers and compare outputs.
"""
from __future__ import annotations

import gzip
import itertools
import os
import sys
import tempfile

import numpy as np
import torch
import transformers
import sentencepiece
from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer

from research.convert import bart, bert, gpt2, t5
from research.data.corpus import default_corpus_path

FIXTURES = os.path.join(os.path.dirname(__file__), '..', '..', 'tests', 'fixtures')
SAMPLES = ['It is a truth universally acknowledged, that a single man [MASK] a fortune.',
           'Émma Woodhouse, handsome, clever, and rich!  £20,000\tper annum...']
TINY = dict(layers=2, d_model=32, heads=4, d_ff=64, positions=64)
SEQ2SEQ_SAMPLES = [
    'It is a truth universally acknowledged, that a single man <extra_id_0> a fortune <mask>.',
    'Émma Woodhouse, handsome, clever, and rich!  £20,000\tper annum... <extra_id_99>']
# Sources and targets of the seq2seq references (row 1 of each is right-padded).
SOURCES = ['Mr. Darcy walked off; and Elizabeth remained', 'with no very cordial feelings.']
TARGETS = ['She told the story with great spirit', 'among her friends.']
GREEDY_STEPS = 8


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
      is_norm = 'layernorm' in name.lower() or 'layer_norm' in name or '.ln_' in name
      p.copy_(1 + noise if is_norm and name.endswith('weight') else
              p + noise if p.ndim > 1 else noise)


def tokenizer_reference(hf_tokenizer, samples=SAMPLES) -> dict[str, np.ndarray]:
  ids = [hf_tokenizer(s, add_special_tokens=False)['input_ids'] for s in samples]
  width = max(map(len, ids))
  return {'sample_texts': np.array(samples),
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


def train_sentencepiece(directory: str, normalization: str, vocab_size: int = 200):
  """A unigram SentencePiece model with T5's special ids (pad 0, eos 1, unk 2, no bos), as
  spiece.model. normalization: 'nmt_nfkc' (T5's; a ~240 KB precompiled table) or 'identity'."""
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(austen_lines()), model_prefix=os.path.join(directory, 'spiece'),
      vocab_size=vocab_size, model_type='unigram', pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      character_coverage=1.0, normalization_rule_name=normalization, minloglevel=2)
  os.remove(os.path.join(directory, 'spiece.vocab'))


def padded(tok, texts: list[str], **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
  enc = tok(texts, padding=True, return_tensors='pt', **kwargs)
  return enc['input_ids'], enc['attention_mask']


def seq2seq_reference(model, tok, start_id: int) -> dict[str, np.ndarray]:
  """Inputs and outputs of a teacher-forced pass, and greedy decoding without a cache."""
  input_ids, attention_mask = padded(tok, SOURCES)  # framed as the tokenizer frames sources
  target_ids, target_mask = padded(tok, TARGETS, add_special_tokens=False)
  start = torch.full((len(TARGETS), 1), start_id)
  decoder_input_ids = torch.cat([start, target_ids[:, :-1]], 1)  # the target shifted right
  decoder_mask = torch.cat([torch.ones_like(start), target_mask[:, :-1]], 1)
  with torch.no_grad():
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_mask,
                output_hidden_states=True)
    greedy, margins = start, []
    for _ in range(GREEDY_STEPS):
      logits = model(input_ids=input_ids, attention_mask=attention_mask,
                     decoder_input_ids=greedy).logits[:, -1]
      top2 = logits.topk(2).values
      margins.append((top2[:, 0] - top2[:, 1]).min().item())
      greedy = torch.cat([greedy, logits.argmax(-1, keepdim=True)], 1)
  # A near-tie would make the greedy reference depend on float rounding.
  assert min(margins) > 1e-3, margins
  return dict(input_ids=input_ids.numpy(), attention_mask=attention_mask.numpy(),
              decoder_input_ids=decoder_input_ids.numpy(), decoder_mask=decoder_mask.numpy(),
              encoder_hidden_states=torch.stack(out.encoder_hidden_states).numpy(),
              decoder_hidden_states=torch.stack(out.decoder_hidden_states).numpy(),
              logits=out.logits.numpy(), source_texts=np.array(SOURCES),
              greedy_ids=greedy[:, 1:].numpy())


def make_t5(directory: str, v11: bool) -> str:
  """T5 v1.0 (tied and rescaled output, ReLU) or T5.1.1 (GeGLU, untied lm_head). The v1.1
  vocabulary skips NFKC normalisation to keep the fixture small (and tests that path)."""
  os.makedirs(directory, exist_ok=True)
  train_sentencepiece(directory, 'identity' if v11 else 'nmt_nfkc')
  tok = transformers.T5Tokenizer.from_pretrained(directory)  # spiece.model + 100 sentinels
  tok.save_pretrained(directory)  # + tokenizer.json, tokenizer_config.json
  shape = (dict(d_kv=16, d_ff=48, num_decoder_layers=3, relative_attention_num_buckets=8,
                relative_attention_max_distance=16, feed_forward_proj='gated-gelu',
                tie_word_embeddings=False) if v11 else
           dict(d_kv=8, d_ff=TINY['d_ff'], feed_forward_proj='relu', tie_word_embeddings=True))
  # The table is padded past the vocabulary, as T5's 32,128 rows hold 32,100 tokens.
  config = transformers.T5Config(
      vocab_size=len(tok) + 20, d_model=TINY['d_model'], num_layers=TINY['layers'],
      num_heads=TINY['heads'], decoder_start_token_id=tok.pad_token_id,
      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, **shape)
  torch.manual_seed(2 + v11)
  model = transformers.T5ForConditionalGeneration(config).eval()
  if v11:  # transformers 5 ties lm_head to shared at init whatever the config says; an own
    # head at d_model**-0.5 keeps the logits O(1), where an absolute 1e-4 tolerance means something
    model.lm_head.weight = torch.nn.Parameter(
        torch.randn(model.lm_head.weight.shape) * config.d_model ** -0.5)
  perturb(model, 2 + v11)
  model.save_pretrained(directory)
  np.savez_compressed(os.path.join(directory, 'reference.npz'),
                      **seq2seq_reference(model, tok, config.decoder_start_token_id),
                      **tokenizer_reference(tok, SEQ2SEQ_SAMPLES))
  return directory


def make_bart(directory: str) -> str:
  os.makedirs(directory, exist_ok=True)
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(austen_lines(), vocab_size=300, show_progress=False,
                          special_tokens=['<s>', '<pad>', '</s>', '<unk>', '<mask>'])
  bpe.save_model(directory)  # vocab.json, merges.txt
  tok = transformers.BartTokenizer(vocab=os.path.join(directory, 'vocab.json'),
                                   merges=os.path.join(directory, 'merges.txt'))
  tok.save_pretrained(directory)
  config = transformers.BartConfig(
      vocab_size=len(tok), d_model=TINY['d_model'], encoder_layers=TINY['layers'],
      decoder_layers=TINY['layers'], encoder_attention_heads=TINY['heads'],
      decoder_attention_heads=TINY['heads'], encoder_ffn_dim=TINY['d_ff'],
      decoder_ffn_dim=TINY['d_ff'], max_position_embeddings=TINY['positions'],
      activation_function='gelu', pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
      eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id,
      forced_eos_token_id=tok.eos_token_id)
  torch.manual_seed(4)
  model = transformers.BartForConditionalGeneration(config).eval()
  perturb(model, 4)
  with torch.no_grad():  # HF never reads the first 2 position rows (fairseq's offset); zero
    for stack in (model.model.encoder, model.model.decoder):  # them so export round-trips exactly
      stack.embed_positions.weight[:2] = 0
  model.save_pretrained(directory)
  np.savez_compressed(os.path.join(directory, 'reference.npz'),
                      **seq2seq_reference(model, tok, config.decoder_start_token_id),
                      **tokenizer_reference(tok, SEQ2SEQ_SAMPLES))
  return directory


def make_bart_classifier(directory: str) -> str:
  """BartForSequenceClassification (3 labels) on hf_bart_tiny's vocabulary: the decoder reads
  the input shifted right behind </s>, the head reads the decoder's state at the last </s>."""
  os.makedirs(directory, exist_ok=True)
  tok = transformers.BartTokenizer.from_pretrained(os.path.join(FIXTURES, 'hf_bart_tiny'))
  tok.save_pretrained(directory)
  config = transformers.BartConfig.from_pretrained(os.path.join(FIXTURES, 'hf_bart_tiny'),
                                                   num_labels=3)
  torch.manual_seed(5)
  model = transformers.BartForSequenceClassification(config).eval()
  perturb(model, 5)
  with torch.no_grad():
    for stack in (model.model.encoder, model.model.decoder):
      stack.embed_positions.weight[:2] = 0
  model.save_pretrained(directory)
  input_ids, attention_mask = padded(tok, SOURCES)  # one </s> per row, as HF requires
  with torch.no_grad():
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
  np.savez_compressed(os.path.join(directory, 'reference.npz'), input_ids=input_ids.numpy(),
                      attention_mask=attention_mask.numpy(), logits=logits.numpy())
  return directory


def check_classifier_import(directory: str, module, hf_class):
  """research.convert's import of the classifier reproduces transformers' logits."""
  del hf_class  # the reference logits were computed by it
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from research.models.task_model import TaskModel  # pylint: disable=g-import-not-at-top
  imported, head = module.load_classifier(directory)
  ref = np.load(os.path.join(directory, 'reference.npz'))
  model = TaskModel(imported.cfg, 'classification', ref['logits'].shape[-1],
                    decoder_start_id=imported.tokenizer.eos_id)
  ids = jnp.asarray(ref['input_ids'])[:, None]
  logits = model.apply({'params': {'encoder_decoder': imported.params, **head}}, ids,
                       jnp.zeros_like(ids), jnp.asarray(ref['attention_mask'])[:, None])['logits']
  diff = np.abs(np.asarray(logits) - ref['logits']).max()
  print(f'{os.path.basename(directory)}: imported, classification logits max |diff| {diff:.2e}')
  assert diff < 1e-5, diff


def check_seq2seq_export(directory: str, module, hf_class):
  """research.convert import -> export -> transformers reload gives the original outputs."""
  imported = module.load(directory)
  ref = np.load(os.path.join(directory, 'reference.npz'))
  with tempfile.TemporaryDirectory() as out:
    module.save(out, imported.cfg, imported.params, imported.tokenizer)
    model = hf_class.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = [tok(str(t), add_special_tokens=False)['input_ids'] for t in ref['sample_texts']]
    assert ids == [[int(i) for i in row if i >= 0] for row in ref['sample_ids']], ids
    with torch.no_grad():
      out = model(input_ids=torch.tensor(ref['input_ids']),
                  attention_mask=torch.tensor(ref['attention_mask']),
                  decoder_input_ids=torch.tensor(ref['decoder_input_ids']),
                  decoder_attention_mask=torch.tensor(ref['decoder_mask']))
  diff = max(np.abs(out.encoder_last_hidden_state.numpy() - ref['encoder_hidden_states'][-1]).max(),
             np.abs(out.logits.numpy() - ref['logits']).max())
  print(f'{os.path.basename(directory)}: exported and reloaded by transformers, '
        f'encoder output and logits max |diff| {diff:.2e}')
  assert diff == 0, diff


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


# name -> (fixture directory, maker, research.convert module, transformers class, export check)
FIXTURE_MAKERS = {
    'bert': ('hf_bert_tiny', make_bert, bert, transformers.BertForPreTraining, check_export),
    'gpt2': ('hf_gpt2_tiny', make_gpt2, gpt2, transformers.GPT2LMHeadModel, check_export),
    't5': ('hf_t5_tiny', lambda d: make_t5(d, v11=False), t5,
           transformers.T5ForConditionalGeneration, check_seq2seq_export),
    't5v11': ('hf_t5v11_tiny', lambda d: make_t5(d, v11=True), t5,
              transformers.T5ForConditionalGeneration, check_seq2seq_export),
    'bart': ('hf_bart_tiny', make_bart, bart, transformers.BartForConditionalGeneration,
             check_seq2seq_export),
    # After 'bart': reads hf_bart_tiny's vocabulary and config.
    'bart_cls': ('hf_bart_cls_tiny', make_bart_classifier, bart,
                 transformers.BartForSequenceClassification, check_classifier_import),
}


def main(names: list[str]):
  unknown = sorted(set(names) - set(FIXTURE_MAKERS))
  if unknown:
    raise SystemExit(f'unknown fixture(s) {", ".join(unknown)}; choose from '
                     f'{", ".join(FIXTURE_MAKERS)}')
  for name in names or FIXTURE_MAKERS:
    dirname, make, module, hf_class, check = FIXTURE_MAKERS[name]
    directory = make(os.path.join(FIXTURES, dirname))
    check(directory, module, hf_class)
    size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
    print(f'{dirname}: {size / 1024:.0f} KiB')


if __name__ == '__main__':
  main(sys.argv[1:])
