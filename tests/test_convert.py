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

from research import convert, generate, loading, models
from research.convert import bart, bert, gpt2, hf_checkpoint, t5
from research.convert.hf_tokenizer import HFTokenizer
from research.data.tokenizer import Tokenizer
from research.models.decoder import Decoder
from research.models.encoder import EncoderLM
from research.objectives import seq2seq

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


# --- Encoder-decoders: T5 v1.0, T5.1.1, BART -------------------------------------------------

T5_DIR = os.path.join(FIXTURES, 'hf_t5_tiny')  # tied, rescaled output; ReLU
T5V11_DIR = os.path.join(FIXTURES, 'hf_t5v11_tiny')  # GeGLU, untied lm_head, 3 decoder layers
BART_DIR = os.path.join(FIXTURES, 'hf_bart_tiny')
SEQ2SEQ = [(t5, T5_DIR), (t5, T5V11_DIR), (bart, BART_DIR)]
SEQ2SEQ_IDS = ['t5', 't5v11', 'bart']


@pytest.mark.parametrize('module,directory', SEQ2SEQ, ids=SEQ2SEQ_IDS)
def test_seq2seq_matches_transformers(module, directory):
  """Every encoder and decoder hidden state and the logits, with padded sources and targets."""
  imported = module.load(directory)
  ref = np.load(os.path.join(directory, 'reference.npz'))
  apply = functools.partial(models.build(imported.cfg).apply, return_intermediates=True)
  out = jax.jit(apply)({'params': imported.params}, ref['input_ids'], ref['decoder_input_ids'],
                       ref['attention_mask'], ref['decoder_mask'])
  diffs = {'encoder_hidden_states': max_diff(jnp.stack(out.encoder.hidden_states),
                                             ref['encoder_hidden_states']),
           'decoder_hidden_states': max_diff(jnp.stack(out.decoder.hidden_states),
                                             ref['decoder_hidden_states']),
           'logits': max_diff(out.logits, ref['logits'])}
  print(f'{os.path.basename(directory)} max |ours - transformers|:', diffs)
  assert max(diffs.values()) <= TOLERANCE, diffs


def test_seq2seq_configs_read_from_the_checkpoint():
  v10, v11, bart_cfg = (module.load(d).cfg for module, d in SEQ2SEQ)
  assert (v10.mlp, v10.activation, v10.tie_output, v10.scale_tied_output) == (
      'dense', 'relu', True, True)
  assert (v11.mlp, v11.activation, v11.tie_output, v11.scale_tied_output) == (
      'gated', 'gelu_tanh', False, False)
  assert (v11.head_dim, v11.num_layers, v11.decoder_layers, v11.relative_buckets,
          v11.relative_max_distance) == (16, 2, 3, 8, 16)
  assert v10.decoder_start == v11.decoder_start == 'pad' and v10.vocab_size == 320
  assert (bart_cfg.decoder_start, bart_cfg.max_len, bart_cfg.position, bart_cfg.embed_ln) == (
      'eos', 64, 'learned', True)


@pytest.mark.parametrize('directory,files', [
    (T5_DIR, ('tokenizer.json',)), (T5_DIR, ('spiece.model',)),
    (T5V11_DIR, ('spiece.model',)),  # no NFKC table: the plain-whitespace path
    (BART_DIR, ('tokenizer.json',)), (BART_DIR, ('vocab.json', 'merges.txt'))])
def test_seq2seq_tokenizer_matches_transformers(directory, files, tmp_path):
  """Sentinels, <mask>, accents, runs of spaces, tabs: transformers' ids and decoded text."""
  tok = convert.load(only(directory, tmp_path / 'copy', *files)).tokenizer
  ref = np.load(os.path.join(directory, 'reference.npz'))
  for text, ids, decoded in zip(ref['sample_texts'], ref['sample_ids'], ref['sample_decoded']):
    ids = [int(i) for i in ids if i >= 0]
    assert tok.encode(str(text)) == ids
    assert tok.decode(ids) == decoded
  if directory == BART_DIR:
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id, tok.cls_id,
            tok.sep_id) == (0, 1, 2, 3, 4, 0, 2)
  else:  # T5: no bos/cls/sep/mask; <extra_id_0> is the last of the 100 sentinels
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id, tok.mask_id) == (0, 1, 2, None, None)
    assert tok.encode('<extra_id_0>') == [tok.vocab_size - 1]
    assert tok.encode('<extra_id_99>') == [tok.vocab_size - 100]


def test_spiece_model_with_byte_fallback_encodes_as_sentencepiece(tmp_path):
  """A SentencePiece model with byte fallback (characters it never saw become <0x..> byte
  pieces): the same ids as SentencePiece itself, and decoding restores the text."""
  import sentencepiece  # pylint: disable=g-import-not-at-top
  lines = [f'{w} and {w}, said Mr. Bennet.' for w in ('Elizabeth', 'Jane', 'Lydia', 'Kitty')]
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(lines * 20), model_prefix=str(tmp_path / 'spiece'), vocab_size=300,
      hard_vocab_limit=False, model_type='unigram', pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      byte_fallback=True, minloglevel=2)
  processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / 'spiece.model'))
  tok = HFTokenizer.load_sentencepiece(str(tmp_path))
  text = '“Elizabeth” — Jane, Zoë  and Kitty'
  assert tok.encode(text) == processor.encode(text)
  assert any(processor.id_to_piece(i).startswith('<0x') for i in processor.encode(text))
  assert tok.decode(tok.encode(text)) == processor.decode(processor.encode(text)) == (
      '“Elizabeth” — Jane, Zoë and Kitty')


@pytest.mark.parametrize('directory', [T5_DIR, BART_DIR], ids=['t5', 'bart'])
def test_seq2seq_tokenizer_survives_save_and_load_saved(directory, tmp_path):
  """What fine-tuning keeps in a workdir's hf_tokenizer/ encodes, decodes and names specials
  as the imported vocabulary does."""
  tok = convert.load(directory).tokenizer
  tok.save(str(tmp_path))
  again = HFTokenizer.load_saved(str(tmp_path))
  ref = np.load(os.path.join(directory, 'reference.npz'))
  for text in ref['sample_texts']:
    assert again.encode(str(text)) == tok.encode(str(text))
    assert again.decode(tok.encode(str(text))) == tok.decode(tok.encode(str(text)))
  names = ('pad_id', 'unk_id', 'bos_id', 'eos_id', 'cls_id', 'sep_id', 'mask_id', 'vocab_size',
           'special_ids')
  assert [getattr(again, n) for n in names] == [getattr(tok, n) for n in names]


@pytest.mark.parametrize('module,directory', SEQ2SEQ, ids=SEQ2SEQ_IDS)
def test_seq2seq_export_import_round_trip_is_exact(module, directory, tmp_path):
  imported = module.load(directory)
  module.save(str(tmp_path), imported.cfg, imported.params, imported.tokenizer)
  # transformers' own tensors, bit for bit, under the same names (the fixtures' unused BART
  # position rows are zeros, as export writes them) ...
  original, exported = (load_file(os.path.join(d, 'model.safetensors'))
                        for d in (directory, tmp_path))
  assert sorted(original) == sorted(exported)
  for name, value in original.items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  # ... and back to the same config, params and vocabulary.
  again = convert.load(str(tmp_path))
  assert again.cfg == imported.cfg
  jax.tree.map(np.testing.assert_array_equal, again.params, imported.params)
  text = 'Mr. Bennet was so odd a mixture of quick parts. <extra_id_3>'
  assert again.tokenizer.encode(text) == imported.tokenizer.encode(text)


@pytest.mark.parametrize('module,directory', SEQ2SEQ, ids=SEQ2SEQ_IDS)
def test_our_trained_seq2seq_params_round_trip(module, directory, tmp_path):
  """Params this codebase made survive export -> import (BART's position table included)."""
  imported = module.load(directory)
  params = jax.jit(lambda: nn.meta.unbox(
      models.init_params(models.build(imported.cfg), jax.random.key(7))))()
  module.save(str(tmp_path), imported.cfg, params, imported.tokenizer)
  again = module.load(str(tmp_path))
  assert again.cfg == imported.cfg
  jax.tree.map(np.testing.assert_array_equal, again.params, jax.tree.map(np.asarray, params))


def test_tied_unrescaled_t5_round_trips(tmp_path):
  """A tied output layer without T5's rescale (transformers 5's `scale_decoder_outputs`
  false) is exported as an lm_head equal to the embeddings and imported back as tied."""
  imported = t5.load(T5_DIR)
  cfg = imported.cfg.replace(scale_tied_output=False)
  t5.save(str(tmp_path), cfg, imported.params, imported.tokenizer)
  weights = load_file(os.path.join(tmp_path, 'model.safetensors'))
  np.testing.assert_array_equal(weights['lm_head.weight'], weights['shared.weight'])
  assert t5.load(str(tmp_path)).cfg == cfg


@pytest.mark.parametrize('module,directory', SEQ2SEQ, ids=SEQ2SEQ_IDS)
def test_imported_seq2seq_generates_like_transformers(module, directory):
  """Cached greedy decoding (encoder once, cross-attention keys cached) writes the tokens that
  transformers' repeated full forward passes chose, from sources framed as its tokenizer does."""
  imported = module.load(directory)
  tok, cfg = imported.tokenizer, imported.cfg
  ref = np.load(os.path.join(directory, 'reference.npz'))
  model = models.build(cfg)
  sources = [seq2seq.frame(tok, tok.encode(str(t)), cfg.decoder_start) for t in ref['source_texts']]
  assert sources == [list(ids[mask == 1]) for ids, mask in zip(ref['input_ids'],
                                                                ref['attention_mask'])]
  steps = ref['greedy_ids'].shape[1]
  new = generate.generate(model, imported.params, sources, max_new_tokens=steps,
                          pad_id=tok.pad_id, start_id=seq2seq.start_id(tok, cfg.decoder_start))
  assert new == ref['greedy_ids'].tolist()
  texts = generate.generate_text(model, imported.params, tok, list(map(str, ref['source_texts'])),
                                 max_new_tokens=steps)
  assert texts == [tok.decode(generate.cut_at_stop(row, [tok.eos_id], steps))
                   for row in ref['greedy_ids']]


@pytest.mark.parametrize('directory', [T5_DIR, BART_DIR], ids=['t5', 'bart'])
def test_load_params_reads_seq2seq_hf_directories(directory):
  loaded = loading.load_params(directory)
  imported = convert.load(directory)
  assert loaded.cfg == imported.cfg and loaded.step == 0
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded.params),
               imported.params)
  assert loaded.tokenizer.encode('Elizabeth') == imported.tokenizer.encode('Elizabeth')


def set_weight(directory, name, value):
  path = os.path.join(directory, 'model.safetensors')
  weights = load_file(path)
  weights[name] = value(weights[name])
  hf_checkpoint.write_checkpoint(directory, hf_checkpoint.read_config(directory), weights)


def test_seq2seq_clear_errors(tmp_path):
  copy = lambda directory, name, *files: only(directory, tmp_path / name, *files)
  cases = [  # (directory, config changes, message)
      (T5_DIR, dict(feed_forward_proj='gated-silu'),
       "feed_forward_proj 'gated-silu' is not supported"),
      (T5_DIR, dict(decoder_start_token_id=1), 'decoder_start_token_id 1 other than pad'),
      (T5V11_DIR, dict(scale_decoder_outputs=True), 'untied lm_head with the d_model'),
      (T5_DIR, dict(model_type='mt5'), "model_type 'mt5' is not supported"),
      (BART_DIR, dict(scale_embedding=True), 'scale_embedding=true'),
      (BART_DIR, dict(normalize_before=True), 'normalize_before=true'),
      (BART_DIR, dict(decoder_attention_heads=2), 'encoder_attention_heads 4 != decoder'),
      (BART_DIR, dict(decoder_ffn_dim=8), 'encoder_ffn_dim 64 != decoder_ffn_dim 8'),
      (BART_DIR, dict(activation_function='silu'), "activation_function 'silu'"),
      (BART_DIR, dict(decoder_start_token_id=0), 'decoder_start_token_id 0 other than eos'),
  ]
  for i, (directory, changes, message) in enumerate(cases):
    bad = copy(directory, f'config{i}', 'tokenizer.json')
    edit_config(bad, **changes)
    with pytest.raises(convert.ConversionError, match=message):
      convert.load(bad)

  biased = copy(BART_DIR, 'biased', 'tokenizer.json')
  set_weight(biased, 'final_logits_bias', lambda b: b + 0.5)
  with pytest.raises(convert.ConversionError, match='final_logits_bias is nonzero'):
    bart.load(biased)
  untied = copy(BART_DIR, 'untied', 'tokenizer.json')
  set_weight(untied, 'model.shared.weight', lambda w: w)  # rewrite, then add a different head
  weights = load_file(os.path.join(untied, 'model.safetensors'))
  weights['lm_head.weight'] = weights['model.shared.weight'] + 1
  hf_checkpoint.write_checkpoint(untied, hf_checkpoint.read_config(untied), weights)
  with pytest.raises(convert.ConversionError, match='lm_head.weight differs'):
    bart.load(untied)
  missing = copy(T5_DIR, 'missing', 'tokenizer.json')
  weights = load_file(os.path.join(missing, 'model.safetensors'))
  del weights['decoder.block.1.layer.1.EncDecAttention.k.weight']
  hf_checkpoint.write_checkpoint(missing, hf_checkpoint.read_config(missing), weights)
  with pytest.raises(convert.ConversionError, match='1 weights are missing'):
    t5.load(missing)

  # Wrong vocabularies: BART's for a T5 (same size, other special ids), T5's for a BART
  # (no <s>), none at all.
  swapped = copy(T5_DIR, 'swapped')
  shutil.copy(os.path.join(BART_DIR, 'tokenizer.json'), swapped)
  with pytest.raises(convert.ConversionError, match="pad token has id 1 but config.json says "
                     'pad_token_id=0; the vocabulary files belong to another model'):
    t5.load(swapped)
  swapped = copy(BART_DIR, 'swapped_bart')
  shutil.copy(os.path.join(T5_DIR, 'tokenizer.json'), swapped)
  with pytest.raises(convert.ConversionError, match="the vocabulary has no '<s>' token"):
    bart.load(swapped)
  with pytest.raises(convert.ConversionError, match='neither tokenizer.json nor spiece.model'):
    t5.load(copy(T5_DIR, 'no_vocab'))
  not_spiece = copy(T5_DIR, 'not_spiece')
  shutil.copy(os.path.join(BART_DIR, 'vocab.json'), os.path.join(not_spiece, 'spiece.model'))
  with pytest.raises(convert.ConversionError, match='not a SentencePiece model'):
    t5.load(not_spiece)


def test_seq2seq_export_refuses_what_the_format_cannot_hold(tmp_path):
  v10, v11, bart_model = (module.load(d) for module, d in SEQ2SEQ)
  with pytest.raises(convert.ConversionError, match='only the BART architecture'):
    bart.save(str(tmp_path), v10.cfg, v10.params, v10.tokenizer)
  with pytest.raises(convert.ConversionError, match='only the T5 architecture'):
    t5.save(str(tmp_path), bart_model.cfg, bart_model.params, bart_model.tokenizer)
  gated_exact_gelu = v11.cfg.replace(activation='gelu')  # HF's 'gated-gelu' means gelu_new
  with pytest.raises(convert.ConversionError, match='only the T5 architecture'):
    t5.save(str(tmp_path), gated_exact_gelu, v11.params, v11.tokenizer)
  with pytest.raises(convert.ConversionError, match="cannot export as model_type 'mt5'"):
    convert.save(str(tmp_path), 'mt5', v10.cfg, v10.params, v10.tokenizer)
  assert not os.listdir(tmp_path)  # nothing half-written


@pytest.mark.slow  # import parity and seq2seq fine-tuning are each tested in `make test`
@pytest.mark.parametrize('directory', [T5_DIR, BART_DIR], ids=['t5', 'bart'])
def test_finetune_seq2seq_from_imported_hf_checkpoint(directory, tmp_path):
  """--config.finetune.init_from=<HF T5 / BART directory> on a seq2seq task: its weights and
  vocabulary (kept in the workdir's hf_tokenizer/) train, decode, and reload for --mode=eval."""
  from research import finetune  # pylint: disable=g-import-not-at-top
  from tests.test_finetune import finetune_cfg  # pylint: disable=g-import-not-at-top
  from tests.test_finetune_seq2seq import seq2seq_dir  # pylint: disable=g-import-not-at-top
  imported = convert.load(directory)
  config = finetune_cfg(seq2seq_dir(tmp_path / 'data'), directory, task__type='seq2seq',
                        task__metrics='bleu,chrf', task__max_target_len=8)
  workdir = tmp_path / 'run'
  ft, _ = finetune.make_finetune(config, str(workdir), need_params=True)
  assert ft.model_cfg == imported.cfg
  results = finetune.run_finetune(config, str(workdir))
  assert {'dev/bleu', 'dev/chrf', 'dev/loss'} <= set(results)
  assert (workdir / loading.HF_TOKENIZER_DIR / 'tokenizer.json').exists()
  assert finetune.evaluate_finetuned(config, str(workdir)) == results


BART_CLS_DIR = os.path.join(FIXTURES, 'hf_bart_cls_tiny')


def test_bart_sequence_classification_logits_equal_hf():
  """HF BartForSequenceClassification: the decoder reads the input shifted right behind </s>,
  the head (dense + tanh + out_proj) reads its state at the last </s>. TaskModel reproduces
  the logits; the unshifted decoder input (what the task model read before) does not."""
  from research.models.encoder_decoder import EncoderDecoder  # pylint: disable=g-import-not-at-top
  from research.models.finetune_heads import last_token  # pylint: disable=g-import-not-at-top
  from research.models.task_model import TaskModel  # pylint: disable=g-import-not-at-top
  imported, head = bart.load_classifier(BART_CLS_DIR)
  ref = np.load(os.path.join(BART_CLS_DIR, 'reference.npz'))
  assert (ref['attention_mask'] == 0).any()  # one row is right-padded
  model = TaskModel(imported.cfg, 'classification', 3,
                    decoder_start_id=imported.tokenizer.eos_id)
  params = {'encoder_decoder': imported.params, **head}
  ids, mask = jnp.asarray(ref['input_ids']), jnp.asarray(ref['attention_mask'])
  logits = model.apply({'params': params}, ids[:, None], jnp.zeros_like(ids)[:, None],
                       mask[:, None])['logits']
  np.testing.assert_allclose(logits, ref['logits'], atol=1e-5)
  hidden = EncoderDecoder(imported.cfg).apply({'params': imported.params}, ids, ids, mask, mask,
                                              logits=False).hidden
  pooled = jnp.tanh(last_token(hidden, mask) @ head['pooler']['kernel'] + head['pooler']['bias'])
  unshifted = pooled @ head['head']['dense']['kernel'] + head['head']['dense']['bias']
  assert np.abs(unshifted - ref['logits']).max() > 1e-2


def test_encoder_decoder_task_model_needs_its_start_token():
  from research.models.task_model import TaskModel  # pylint: disable=g-import-not-at-top
  imported, _ = bart.load_classifier(BART_CLS_DIR)
  ids = jnp.ones((1, 1, 4), jnp.int32)
  with pytest.raises(ValueError, match='decoder_start_id'):
    TaskModel(imported.cfg, 'classification', 3).init(jax.random.key(0), ids, ids, ids)
