"""Corpus readers (text, gz, directory, JSONL), their errors, and the eval split."""

import gzip
import json

import ml_collections
import pytest

from research.data import corpus

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
