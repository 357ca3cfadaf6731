"""SentencePiece tokenizer: special ids, round trip, reuse, errors, atomic writes."""

import os

import pytest

from research.data import corpus
from research.data import tokenizer as tokenizer_lib

VOCAB = 600


@pytest.fixture(scope='module')
def texts():
  documents = corpus.read_documents(corpus.default_corpus_path())
  return [line for doc in documents[:16] for line in doc]  # ~600 paragraphs


@pytest.fixture(scope='module')
def model_path(texts, tmp_path_factory):
  path = tmp_path_factory.mktemp('tok') / 'tokenizer.model'
  tokenizer_lib.train_tokenizer(texts, path, VOCAB, 'unigram', 200_000)
  return path


@pytest.fixture(scope='module')
def tok(model_path):
  return tokenizer_lib.Tokenizer.load(model_path)


def test_special_ids_and_vocab_size(tok):
  assert tok.vocab_size == VOCAB
  ids = (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.cls_id,
         tok.sep_id, tok.mask_id)
  assert ids == (0, 1, 2, 3, 4, 5, 6)
  assert [tok.id_to_piece(i) for i in ids] == [
      '<pad>', '<unk>', '<s>', '</s>', '[CLS]', '[SEP]', '[MASK]']
  assert tok.special_ids == ids
  assert tok.model_type == 'unigram'


def test_round_trip(tok, texts):
  for text in texts[:300] + ['It is a truth universally acknowledged, that a'
                             ' single man in possession of a good fortune,'
                             ' must be in want of a wife.']:
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text


def test_encode_batch_matches_encode(tok, texts):
  assert tok.encode_batch(texts[:50]) == [tok.encode(t) for t in texts[:50]]


def test_decode_skips_specials_and_mask_is_one_piece(tok):
  ids = tok.encode('Emma was handsome.')
  assert tok.decode([tok.cls_id, *ids, tok.sep_id, tok.pad_id, tok.pad_id]) == (
      'Emma was handsome.')
  assert tok.mask_id in tok.encode('Emma was [MASK].')


def test_training_is_deterministic(texts, model_path, tmp_path):
  again = tmp_path / 'again.model'
  tokenizer_lib.train_tokenizer(texts, again, VOCAB, 'unigram', 200_000)
  assert again.read_bytes() == model_path.read_bytes()
  assert again.with_suffix('.vocab').exists()


def test_bpe(texts, tmp_path):
  tok = tokenizer_lib.train_tokenizer(texts[:300], tmp_path / 't.model', 400,
                                      'bpe', 200_000)
  assert tok.vocab_size == 400 and tok.model_type == 'bpe'
  assert tok.decode(tok.encode(texts[0])) == texts[0]


def test_load_or_train_reuses_saved_model(model_path):
  def fail():
    raise AssertionError('retrained although a model exists')

  tok = tokenizer_lib.load_or_train(model_path, fail, VOCAB, 'unigram', 200_000)
  assert tok.vocab_size == VOCAB


def test_load_or_train_trains_when_absent(texts, tmp_path):
  calls = []

  def texts_fn():
    calls.append(1)
    return texts[:300]

  path = tmp_path / 'sub' / 'tokenizer.model'
  tok = tokenizer_lib.load_or_train(path, texts_fn, 400, 'unigram', 200_000)
  assert calls == [1] and path.exists() and tok.vocab_size == 400


def test_vocab_size_mismatch_is_a_one_line_error(model_path):
  with pytest.raises(ValueError) as e:
    tokenizer_lib.load_or_train(model_path, list, 8000, 'unigram', 200_000)
  message = str(e.value)
  assert str(VOCAB) in message and '8000' in message
  assert '--config.data.tokenizer.vocab_size' in message and '\n' not in message


def test_model_type_mismatch_is_an_error(model_path):
  with pytest.raises(ValueError, match="'bpe'"):
    tokenizer_lib.load_or_train(model_path, list, VOCAB, 'bpe', 200_000)


def test_corpus_too_small_for_vocab(tmp_path):
  with pytest.raises(ValueError) as e:
    tokenizer_lib.train_tokenizer(['tiny corpus', 'of two lines'],
                                  tmp_path / 't.model', 5000, 'unigram', 1000)
  message = str(e.value)
  assert '--config.data.tokenizer.vocab_size' in message and '\n' not in message
  assert not (tmp_path / 't.model').exists()


def test_interrupted_training_leaves_old_model_and_no_debris(texts, tmp_path):
  path = tmp_path / 'tokenizer.model'
  path.write_bytes(b'previous model')

  def interrupted():
    yield from texts[:100]
    raise KeyboardInterrupt  # a killed run, as far as Python can tell

  with pytest.raises(BaseException):
    tokenizer_lib.train_tokenizer(interrupted(), path, 300, 'unigram', 200_000)
  assert path.read_bytes() == b'previous model'
  assert os.listdir(tmp_path) == ['tokenizer.model']
