"""Corpus readers (text, gz, directory, JSONL), their errors, and the eval split."""

import codecs
import gzip
import json

import ml_collections
import pytest

from research.data import corpus, text_files
from tests.conftest import run_main
from tests.test_train import assert_one_line_error

TEXT = 'First line.\nSecond line of doc one.\n\n\n  Doc two, only line.  \n\nDoc three.\n'
DOCS = [['First line.', 'Second line of doc one.'], ['Doc two, only line.'],
        ['Doc three.']]


def _config(**data):
  return ml_collections.ConfigDict(
      {'data': {'corpus': '', 'eval_corpus': '', 'eval_every': 20, **data}})


def test_text_file(tmp_path):
  (tmp_path / 'c.txt').write_text(TEXT)
  assert corpus.read_documents(tmp_path / 'c.txt') == DOCS


def test_gzip_file(tmp_path):
  with gzip.open(tmp_path / 'c.txt.gz', 'wt', encoding='utf-8') as f:
    f.write(TEXT)
  assert corpus.read_documents(str(tmp_path / 'c.txt.gz')) == DOCS


def test_directory_is_read_recursively_in_sorted_order(tmp_path):
  (tmp_path / 'b').mkdir()
  (tmp_path / 'b' / 'x.txt').write_text('B one.\n')
  (tmp_path / 'a.txt').write_text('A one.\n\nA two.\n')
  (tmp_path / 'c.jsonl').write_text(json.dumps({'text': 'C one.'}) + '\n')
  (tmp_path / 'README.md').write_text('not corpus text\n')
  assert corpus.read_documents(tmp_path) == [
      ['A one.'], ['A two.'], ['B one.'], ['C one.']]


def test_jsonl(tmp_path):
  records = [{'text': 'Para one.\nPara two.\n', 'id': 1}, {'text': '   '},
             {'text': 'Other doc.'}]
  lines = '\n'.join(json.dumps(r) for r in records) + '\n\n'
  (tmp_path / 'c.jsonl').write_text(lines)
  with gzip.open(tmp_path / 'c.jsonl.gz', 'wt', encoding='utf-8') as f:
    f.write(lines)
  expected = [['Para one.', 'Para two.'], ['Other doc.']]
  assert corpus.read_documents(tmp_path / 'c.jsonl') == expected
  assert corpus.read_documents(tmp_path / 'c.jsonl.gz') == expected


def _one_line_error(path, match):
  with pytest.raises(corpus.CorpusError, match=match) as e:
    corpus.read_documents(path)
  assert str(path) in str(e.value) and '\n' not in str(e.value)
  assert isinstance(e.value, ValueError)


def test_missing_path(tmp_path):
  _one_line_error(tmp_path / 'nope.txt', 'does not exist.*--config.data.corpus')


def test_directory_without_corpus_files(tmp_path):
  (tmp_path / 'notes.md').write_text('hello\n')
  _one_line_error(tmp_path, 'no .*files')


def test_empty_corpus(tmp_path):
  (tmp_path / 'c.txt').write_text('\n\n  \n')
  _one_line_error(tmp_path / 'c.txt', 'empty corpus')


def test_jsonl_without_text_names_the_line(tmp_path):
  (tmp_path / 'c.jsonl').write_text('{"text": "ok"}\n{"body": "no text"}\n')
  _one_line_error(tmp_path / 'c.jsonl', r'c\.jsonl:2: no "text"')
  (tmp_path / 'd.jsonl').write_text('not json\n')
  _one_line_error(tmp_path / 'd.jsonl', r'd\.jsonl:1: not JSON')


def test_vendored_austen():
  documents = corpus.read_documents(corpus.default_corpus_path())
  # The chapter and paragraph counts of /work/shared/data/README.md.
  assert len(documents) == 269
  assert sum(len(d) for d in documents) == 9990
  assert documents[0][0].startswith('The family of Dashwood had long been settled in Sussex.')


def test_split_holds_out_every_nth_document():
  documents = [[f'doc {i}'] for i in range(45)]
  train, held_out = corpus.split_documents(documents, 20)
  assert held_out == [['doc 19'], ['doc 39']]
  assert len(train) == 43 and not set(map(tuple, train)) & set(map(tuple, held_out))


def test_split_of_a_small_corpus_holds_out_its_last_document():
  train, held_out = corpus.split_documents([['a'], ['b'], ['c']], 20)
  assert (train, held_out) == ([['a'], ['b']], [['c']])


@pytest.mark.parametrize('documents,eval_every', [([['a'], ['b']], 0),
                                                  ([['a'], ['b']], 1),
                                                  ([['only one']], 20)])
def test_split_errors(documents, eval_every):
  with pytest.raises(corpus.CorpusError, match='eval_corpus'):
    corpus.split_documents(documents, eval_every)


def test_load_corpora(tmp_path):
  (tmp_path / 'train.txt').write_text(TEXT)
  (tmp_path / 'eval.txt').write_text('Held out.\n')
  train, held_out = corpus.load_corpora(_config(
      corpus=str(tmp_path / 'train.txt'), eval_corpus=str(tmp_path / 'eval.txt')))
  assert (train, held_out) == (DOCS, [['Held out.']])
  train, held_out = corpus.load_corpora(_config(eval_every=2))
  assert (len(train), len(held_out)) == (135, 134)  # Austen's 269 chapters


# --- files as they come: a byte-order mark, Windows line ends, huge lines, other encodings


def _write_bytes(path, raw: bytes):
  if str(path).endswith('.gz'):
    with gzip.open(path, 'wb') as f:
      f.write(raw)
  else:
    path.write_bytes(raw)
  return path


@pytest.mark.parametrize('name', ['c.txt', 'c.txt.gz'])
def test_bom_and_crlf_line_ends_read_as_plain_text(tmp_path, name):
  raw = codecs.BOM_UTF8 + TEXT.replace('\n', '\r\n').encode('utf-8')
  assert corpus.read_documents(_write_bytes(tmp_path / name, raw)) == DOCS


def test_bom_and_crlf_in_jsonl(tmp_path):
  lines = [json.dumps({'text': 'Para one.\r\nPara two.'}), json.dumps({'text': 'Doc two.'})]
  raw = codecs.BOM_UTF8 + '\r\n'.join(lines).encode('utf-8') + b'\r\n'
  assert corpus.read_documents(_write_bytes(tmp_path / 'c.jsonl', raw)) == [
      ['Para one.', 'Para two.'], ['Doc two.']]


def test_ten_megabyte_line_is_read_whole(tmp_path):
  line = ' '.join(['Marianne walked out in the rain.'] * 320_000)  # 10.5 MB, no newline
  (tmp_path / 'c.txt').write_text(f'Short.\n\n{line}\n', encoding='utf-8')
  (tmp_path / 'c.jsonl').write_text(json.dumps({'text': line}) + '\n', encoding='utf-8')
  assert corpus.read_documents(tmp_path / 'c.txt') == [['Short.'], [line]]
  assert corpus.read_documents(tmp_path / 'c.jsonl') == [[line]]


@pytest.mark.parametrize('name', ['c.txt', 'c.txt.gz', 'c.jsonl'])
def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path, name):
  good = '{"text": "Fine."}\n' if 'jsonl' in name else 'Fine.\n'
  bad = '{"text": "Caf\xe9."}\n' if 'jsonl' in name else 'Caf\xe9 au lait.\n'
  path = _write_bytes(tmp_path / name, (good * 2).encode() + bad.encode('latin-1'))
  with pytest.raises(text_files.TextFileError) as error:
    corpus.read_documents(path)
  message = str(error.value)
  column = bad.index('\xe9') + 1
  assert message.startswith(f'{path}:3: not UTF-8 (byte 0xe9 at byte {column} of the line); '
                            'convert the file to UTF-8'), message
  assert '\n' not in message and isinstance(error.value, ValueError)


def test_truncated_gzip_names_the_file(tmp_path):
  raw = gzip.compress(TEXT.encode() * 100)
  (tmp_path / 'c.txt.gz').write_bytes(raw[:len(raw) // 2])
  with pytest.raises(text_files.TextFileError, match=r'c\.txt\.gz: not a readable gzip file'):
    corpus.read_documents(tmp_path / 'c.txt.gz')


def test_cli_reports_a_latin1_corpus_in_one_line(tmp_path):
  path = _write_bytes(tmp_path / 'c.txt', b'Fine.\n\nCaf\xe9.\n')
  result = run_main('--config=configs/gpt.py:variant=tiny', f'--workdir={tmp_path}/run',
                    f'--config.data.corpus={path}')
  assert_one_line_error(result, f'{path}:3: not UTF-8 (byte 0xe9 at byte 4 of the line)')
