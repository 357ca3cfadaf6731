"""HF checkpoint import/export: parity with transformers' outputs (fixtures made once by
research/convert/make_fixtures.py; no torch here), exact round trips, clear errors."""
import dataclasses
import functools
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from research import convert, generate
from research.convert import bert, gpt2, hf_checkpoint
from research.data.tokenizer import Tokenizer
from research.models.decoder import Decoder
from research.models.encoder import EncoderLM

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
BERT_DIR = os.path.join(FIXTURES, 'hf_bert_tiny')
GPT2_DIR = os.path.join(FIXTURES, 'hf_gpt2_tiny')
TOLERANCE = 1e-4


def max_diff(a, b) -> float:
  return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def test_bert_matches_transformers():
  imported = bert.load(BERT_DIR)
  ref = np.load(os.path.join(BERT_DIR, 'reference.npz'))
  apply = functools.partial(EncoderLM(imported.cfg).apply, return_intermediates=True)
  out = jax.jit(apply)({'params': imported.params}, ref['input_ids'], ref['segment_ids'],
                       ref['attention_mask'])
  diffs = {'hidden_states': max_diff(jnp.stack(out['encoder'].hidden_states), ref['hidden_states']),
           'pooled': max_diff(out['encoder'].pooled, ref['pooled']),
           'mlm_logits': max_diff(out['mlm_logits'], ref['mlm_logits']),
           'nsp_logits': max_diff(out['nsp_logits'], ref['nsp_logits'])}
  print('BERT max |ours - transformers|:', diffs)
  assert max(diffs.values()) <= TOLERANCE, diffs
  assert imported.initialized == ()


def test_gpt2_matches_transformers():
  imported = gpt2.load(GPT2_DIR)
  ref = np.load(os.path.join(GPT2_DIR, 'reference.npz'))
  apply = functools.partial(Decoder(imported.cfg).apply, return_intermediates=True)
  out = jax.jit(apply)({'params': imported.params}, ref['input_ids'])
  diffs = {'hidden_states': max_diff(jnp.stack(out.hidden_states), ref['hidden_states']),
           'logits': max_diff(out.logits, ref['logits'])}
  print('GPT-2 max |ours - transformers|:', diffs)
  assert max(diffs.values()) <= TOLERANCE, diffs


def only(directory, out, *names) -> str:
  """A copy of a fixture directory in `out` holding only `names` (+ config and weights)."""
  out.mkdir(parents=True)
  for name in ('config.json', 'model.safetensors', *names):
    shutil.copy(os.path.join(directory, name), out / name)
  return str(out)


@pytest.mark.parametrize('directory,files', [
    (BERT_DIR, ('tokenizer.json',)), (BERT_DIR, ('vocab.txt', 'tokenizer_config.json')),
    (GPT2_DIR, ('tokenizer.json',)), (GPT2_DIR, ('vocab.json', 'merges.txt'))])
def test_tokenizer_matches_transformers(directory, files, tmp_path):
  """From tokenizer.json or from the original vocabulary files: transformers' ids and text."""
  tok = convert.load(only(directory, tmp_path / 'copy', *files)).tokenizer
  ref = np.load(os.path.join(directory, 'reference.npz'))
  for text, ids, decoded in zip(ref['sample_texts'], ref['sample_ids'], ref['sample_decoded']):
    ids = [int(i) for i in ids if i >= 0]
    assert tok.encode(str(text)) == ids
    assert tok.encode_batch([str(text)]) == [ids]
    assert tok.decode(ids) == decoded


def padded_copy(directory, out, length=128) -> str:
  """A copy of a fixture whose tokenizer.json pads and truncates every encoding to `length`,
  as published checkpoints' files do (sentence-transformers: Fixed 128)."""
  shutil.copytree(directory, out)
  with open(os.path.join(directory, 'tokenizer.json'), encoding='utf-8') as f:
    spec = json.load(f)
  pad_token = '[PAD]' if 'bert' in os.path.basename(directory) else '<|endoftext|>'
  spec['padding'] = {'strategy': {'Fixed': length}, 'direction': 'Right',
                     'pad_to_multiple_of': None, 'pad_id': spec['model']['vocab'][pad_token],
                     'pad_type_id': 0, 'pad_token': pad_token}
  spec['truncation'] = {'direction': 'Right', 'max_length': length, 'strategy': 'LongestFirst',
                        'stride': 0}
  with open(os.path.join(out, 'tokenizer.json'), 'w', encoding='utf-8') as f:
    json.dump(spec, f)
  return str(out)


@pytest.mark.parametrize('directory', [BERT_DIR, GPT2_DIR])
def test_tokenizer_json_padding_and_truncation_are_ignored(directory, tmp_path):
  """encode() gives the unpadded, untruncated ids (no specials) whatever tokenizer.json says."""
  padded = convert.load(padded_copy(directory, tmp_path / 'padded')).tokenizer
  plain = convert.load(directory).tokenizer
  ref = np.load(os.path.join(directory, 'reference.npz'))
  for text, ids in zip(ref['sample_texts'], ref['sample_ids']):
    ids = [int(i) for i in ids if i >= 0]
    assert padded.encode(str(text)) == ids
    assert padded.encode_batch([str(text), 'a']) == [ids, plain.encode('a')]
  long_text = ' '.join(str(t) for t in ref['sample_texts']) * 10
  assert len(padded.encode(long_text)) > 128
  assert padded.encode(long_text) == plain.encode(long_text)
  specials = {padded.cls_id, padded.sep_id} - {None}
  assert not specials & set(padded.encode(str(ref['sample_texts'][0])))


def test_padded_tokenizer_json_encodes_tasks_as_the_plain_one(tmp_path):
  """Tagging (one word at a time) and sentence pairs: the same arrays as the plain fixture."""
  from research.tasks import encoding
  from research.tasks.readers import Example
  toks = [convert.load(d).tokenizer for d in (BERT_DIR, padded_copy(BERT_DIR, tmp_path / 'p'))]
  words = 'Elinor and Marianne walked to Barton Park in the rain .'.split()
  tagging = [Example(words=tuple(words), tags=('B-PER', 'O', 'B-PER', 'O', 'O', 'B-LOC',
                                               'I-LOC', 'O', 'O', 'O', 'O'))]
  pairs = [Example(texts=('The quick brown fox.', 'It jumps over the lazy dog.'), label='1'),
           Example(texts=('Sense and sensibility', 'Pride'), label='0')]
  encoded = []
  for tok in toks:
    style = encoding.InputStyle.create('bert', tok)
    arrays, first = encoding.encode_tagging(tagging, tok, style, 48, labels=('B-LOC', 'B-PER',
                                                                             'I-LOC', 'O'))
    pair = encoding.encode_sequences(pairs, tok, style, 48, task_type='classification',
                                     labels=('0', '1'))
    encoded.append((arrays, first, pair))
  (plain_tags, plain_first, plain_pair), (tags, first, pair) = encoded
  assert (plain_first >= 0).all()  # every word fits: the test can tell a cut-off word
  np.testing.assert_array_equal(first, plain_first)
  for key in plain_tags:
    np.testing.assert_array_equal(tags[key], plain_tags[key], err_msg=key)
  for key in plain_pair:
    np.testing.assert_array_equal(pair[key], plain_pair[key], err_msg=key)
  assert (plain_pair['segment_ids'][0, 0] == 1).any()  # the second sentence is there


@pytest.mark.parametrize('module,directory', [(bert, BERT_DIR), (gpt2, GPT2_DIR)])
def test_export_import_round_trip_is_exact(module, directory, tmp_path):
  imported = module.load(directory)
  module.save(str(tmp_path), imported.cfg, imported.params, imported.tokenizer)
  # The exported tensors are transformers' own, bit for bit, under the same names ...
  original, exported = (load_file(os.path.join(d, 'model.safetensors'))
                        for d in (directory, tmp_path))
  assert sorted(original) == sorted(exported)
  for name, value in original.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  # ... and import back to the same config, params and vocabulary.
  again = module.load(str(tmp_path))
  assert again.cfg == imported.cfg
  jax.tree.map(np.testing.assert_array_equal, again.params, imported.params)
  text = 'Mr. Bennet was so odd a mixture of quick parts.'
  assert again.tokenizer.encode(text) == imported.tokenizer.encode(text)
  assert again.tokenizer.vocab_size == imported.tokenizer.vocab_size


@pytest.mark.parametrize('module,model_cls,directory', [(bert, EncoderLM, BERT_DIR),
                                                       (gpt2, Decoder, GPT2_DIR)])
def test_our_trained_params_round_trip(module, model_cls, directory, tmp_path):
  """Params this codebase made (not ones that came from HF) survive export -> import."""
  cfg = module.load(directory).cfg
  tokenizer = module.load(directory).tokenizer
  params = jax.jit(lambda: nn.meta.unbox(
      model_cls(cfg).init(jax.random.key(7), jnp.zeros((1, 4), jnp.int32))['params']))()
  module.save(str(tmp_path), cfg, params, tokenizer)
  jax.tree.map(np.testing.assert_array_equal, module.load(str(tmp_path)).params,
               jax.tree.map(np.asarray, params))


def test_imported_gpt2_generates_text():
  imported = convert.load(GPT2_DIR)
  model = Decoder(imported.cfg)
  text = generate.complete(model, imported.params, imported.tokenizer, 'Mr. Darcy',
                           max_new_tokens=8)
  ids = imported.tokenizer.encode('Mr. Darcy')
  greedy = generate.generate(model, imported.params, [[imported.tokenizer.eos_id, *ids]],
                             max_new_tokens=8, eos_id=imported.tokenizer.eos_id)[0]
  assert 'Mr. Darcy' + text == imported.tokenizer.decode(ids + greedy)


def test_bert_without_heads_initialises_them(tmp_path):
  directory = only(BERT_DIR, tmp_path / 'bare', 'vocab.txt')
  path = os.path.join(directory, 'model.safetensors')
  weights = {k[len('bert.'):]: v for k, v in load_file(path).items()
             if k.startswith('bert.') and '.pooler.' not in k}  # a bare BertModel, no pooler
  hf_checkpoint.write_checkpoint(directory, hf_checkpoint.read_config(directory), weights)
  imported = bert.load(directory)
  assert imported.initialized and all(p.startswith(bert.HEADS) for p in imported.initialized)
  np.testing.assert_array_equal(imported.params['encoder']['embeddings']['token']['embedding'],
                                weights['embeddings.word_embeddings.weight'])


def edit_config(directory, **changes):
  path = os.path.join(directory, 'config.json')
  with open(path) as f:
    config = json.load(f)
  config.update(changes)
  with open(path, 'w') as f:
    json.dump(config, f)


def test_clear_errors(tmp_path):
  with pytest.raises(convert.ConversionError, match='not a directory'):
    convert.load(str(tmp_path / 'nowhere'))
  with pytest.raises(convert.ConversionError, match='config.json is missing'):
    convert.load(str(tmp_path))

  no_weights = tmp_path / 'no_weights'
  no_weights.mkdir()
  for name in ('config.json', 'tokenizer.json'):
    shutil.copy(os.path.join(GPT2_DIR, name), no_weights)
  with pytest.raises(convert.ConversionError, match='model.safetensors is missing'):
    gpt2.load(str(no_weights))

  no_vocab = only(GPT2_DIR, tmp_path / 'no_vocab', 'merges.txt')
  with pytest.raises(convert.ConversionError, match='lacks vocab.json'):
    gpt2.load(no_vocab)

  roberta = only(BERT_DIR, tmp_path / 'roberta', 'vocab.txt')
  edit_config(roberta, model_type='roberta')
  with pytest.raises(convert.ConversionError, match="model_type 'roberta' is not supported"):
    convert.load(roberta)
  with pytest.raises(convert.ConversionError, match="model_type 'roberta'.*reads 'bert'"):
    bert.load(roberta)
  edit_config(roberta, model_type='bert', position_embedding_type='relative_key')
  with pytest.raises(convert.ConversionError, match='relative_key'):
    bert.load(roberta)

  small_vocab = only(GPT2_DIR, tmp_path / 'small_vocab', 'tokenizer.json')
  edit_config(small_vocab, vocab_size=200)
  with pytest.raises(convert.ConversionError, match='vocabulary has 300 tokens but the checkpoint '
                     'embeds only 200'):
    gpt2.load(small_vocab)
  edit_config(small_vocab, vocab_size=300, n_embd=64)
  with pytest.raises(convert.ConversionError, match='does not fit.*different models'):
    gpt2.load(small_vocab)


def test_export_refuses_what_the_format_cannot_hold(tmp_path):
  imported = gpt2.load(GPT2_DIR)
  gpt3 = dataclasses.replace(imported.cfg, local_window=4)
  with pytest.raises(convert.ConversionError, match='only the GPT-2 architecture'):
    gpt2.save(str(tmp_path), gpt3, imported.params, imported.tokenizer)
  with pytest.raises(convert.ConversionError, match='only the BERT architecture'):
    bert.save(str(tmp_path), imported.cfg, imported.params, imported.tokenizer)


def test_hf_tokenizer_has_the_sentencepiece_interface():
  tok = convert.load(GPT2_DIR).tokenizer
  for name in ('pad_id', 'unk_id', 'bos_id', 'eos_id', 'cls_id', 'sep_id', 'mask_id',
               'vocab_size', 'special_ids', 'encode', 'encode_batch', 'decode', 'id_to_piece'):
    assert hasattr(Tokenizer, name) and hasattr(tok, name), name
