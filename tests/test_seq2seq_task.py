"""The seq2seq task type: readers, bad input, sacrebleu metrics, copy baseline (no model)."""
import json

import ml_collections
import pytest
import sacrebleu

from configs import finetune as finetune_config
from research.tasks import features, metrics
from research.tasks.styles import seq2seq as seq2seq_style
from research.tasks.readers import TaskDataError
from research.tasks.task import load_task


def task_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  finetune_config.add_fields(c)
  for key, value in {'type': 'seq2seq', **overrides}.items():
    c.task[key] = value
  return c.task


def modernize():
  return load_task(task_config(**finetune_config.VENDORED['modernize']))


def load_error(tmp_path, files: dict[str, str], **overrides) -> str:
  for name, text in files.items():
    (tmp_path / name).write_text(text, encoding='utf-8')
  with pytest.raises(TaskDataError) as info:
    load_task(task_config(format=next(iter(files)).rsplit('.', 1)[1], data_dir=str(tmp_path),
                          **overrides))
  message = str(info.value)
  assert '\n' not in message  # one line for `error: ...`
  return message


def test_vendored_modernize_task():
  task = modernize()
  assert task.type == 'seq2seq' and task.metrics == ('bleu', 'chrf', 'exact_match')
  assert {k: len(v) for k, v in task.splits.items()} == {'train': 24813, 'dev': 3088,
                                                         'test': 3192}
  first = task.splits['dev'][0]  # Joshua 1:1
  assert first.texts[0].startswith('Now after the death of Moses the servant of the LORD')
  assert first.target.startswith('Now after the death of Moses the servant of Yahweh, Yahweh')
  assert first.uid == '0' and task.splits['dev'][-1].uid == '3087'
  assert all(e.target for split in task.splits.values() for e in split)
  config = finetune_config.get_config('task=modernize')
  assert config.task.type == 'seq2seq' and config.data.max_seq_len == 80


def test_csv_jsonl_columns_and_unlabelled_test(tmp_path):
  (tmp_path / 'train.csv').write_text('id,old,new\n1,"thou art, verily",you are\n',
                                      encoding='utf-8')
  (tmp_path / 'dev.csv').write_text('id,old,new\n2,ye,you\n', encoding='utf-8')
  (tmp_path / 'test.csv').write_text('id,old\n3,thee\n', encoding='utf-8')
  task = load_task(task_config(format='csv', data_dir=str(tmp_path), source_column='old',
                               target_column='new'))
  assert task.splits['train'][0].texts == ('thou art, verily',)
  assert task.splits['train'][0].target == 'you are'
  assert task.splits['test'][0].target is None  # unlabelled: predictions only
  rows = [{'source': 'spake', 'target': 'spoke'}, {'source': 'hath', 'target': 'has'}]
  for split in ('train', 'dev'):
    (tmp_path / f'{split}.jsonl').write_text('\n'.join(map(json.dumps, rows)) + '\n')
  task = load_task(task_config(format='jsonl', data_dir=str(tmp_path)))
  assert [e.target for e in task.splits['dev']] == ['spoke', 'has']


def test_missing_column_names_file_column_and_header(tmp_path):
  message = load_error(tmp_path, {'train.tsv': 'kjv\tweb\nthou\tyou\n',
                                  'dev.tsv': 'kjv\tweb\nye\tyou\n'})
  assert f"{tmp_path / 'train.tsv'}: no column 'source' (columns: kjv, web)" in message
  assert '--config.task.source_column' in message
  # A dev file without targets cannot be scored: an error, unlike a test file.
  message = load_error(tmp_path, {'train.tsv': 'source\ttarget\nthou\tyou\n',
                                  'dev.tsv': 'source\nye\n'})
  assert f"{tmp_path / 'dev.tsv'}: no column 'target' (columns: source)" in message


def test_empty_target_or_source_is_counted_or_with_strict_names_the_line(tmp_path):
  files = {'train.tsv': 'source\ttarget\nthou\tyou\nye\t \n',
           'dev.tsv': 'source\ttarget\nye\tyou\n\tyou\n'}
  for name, text in files.items():
    (tmp_path / name).write_text(text, encoding='utf-8')
  task = load_task(task_config(format='tsv', data_dir=str(tmp_path)))
  assert [e.target for e in task.splits['train']] == ['you']
  assert task.dropped.counts == {str(tmp_path / 'train.tsv'): 1, str(tmp_path / 'dev.tsv'): 1}
  assert task.dropped.first[0] == f"{tmp_path / 'train.tsv'}:3: empty 'target' (dropped)"
  message = load_error(tmp_path, files, strict=True)
  assert message.startswith(f"{tmp_path / 'train.tsv'}:3: empty 'target'; fix or delete")
  message = load_error(tmp_path, {'train.tsv': 'source\ttarget\nthou\tyou\n',
                                  'dev.tsv': files['dev.tsv']}, strict=True)
  assert message.startswith(f"{tmp_path / 'dev.tsv'}:3: empty 'source'")
  rows = [{'source': 'spake', 'target': 'spoke'}, {'source': 'hath', 'target': None}]
  message = load_error(tmp_path, {'train.jsonl': '\n'.join(map(json.dumps, rows)),
                                  'dev.jsonl': json.dumps(rows[0])}, strict=True)
  assert "train.jsonl:2: empty 'target'" in message


@pytest.mark.parametrize('text', ['', 'source\ttarget\n'])
def test_empty_file(tmp_path, text):
  message = load_error(tmp_path, {'train.tsv': 'source\ttarget\nthou\tyou\n', 'dev.tsv': text})
  assert f"{tmp_path / 'dev.tsv'} holds no examples" in message


def test_only_tabular_formats_and_seq2seq_metrics(tmp_path):
  with pytest.raises(ValueError, match="seq2seq reads headed tsv/csv/jsonl files, not "
                                       "--config.task.format='conll'"):
    load_task(task_config(format='conll', data_dir=str(tmp_path)))
  config = finetune_config.VENDORED['modernize']
  with pytest.raises(ValueError, match=r"metrics \['accuracy'\] do not apply to seq2seq"):
    load_task(task_config(**config, metrics='accuracy', eval_limit=2))
  task = load_task(task_config(**config, metrics='chrf', eval_limit=2))
  dev = task.splits['dev']
  assert task.score(dev, [e.target for e in dev]) == {'chrf': pytest.approx(100.0)}


HYPOTHESES = ['the cat sat on a mat', 'hello there', 'It is a truth universally acknowledged.']
REFERENCES = ['the cat sat on the mat', 'hello there friend',
              'It is a truth universally acknowledged.']


def test_bleu_chrf_equal_sacrebleu_and_perfect_is_100():
  scores = metrics.seq2seq_scores(REFERENCES, HYPOTHESES)
  assert scores['bleu'] == pytest.approx(sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES]).score)
  assert scores['chrf'] == pytest.approx(sacrebleu.corpus_chrf(HYPOTHESES, [REFERENCES]).score)
  assert 0 < scores['bleu'] < 100 and 0 < scores['chrf'] < 100
  assert scores['exact_match'] == pytest.approx(1 / 3)
  assert metrics.seq2seq_scores(REFERENCES, REFERENCES) == pytest.approx(
      {'bleu': 100.0, 'chrf': 100.0, 'exact_match': 1.0})
  with pytest.raises(ValueError, match='2 predictions for 3 references'):
    metrics.seq2seq_scores(REFERENCES, HYPOTHESES[:2])


def test_signatures_are_sacrebleus():
  bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
  bleu.corpus_score(HYPOTHESES, [REFERENCES])
  chrf.corpus_score(HYPOTHESES, [REFERENCES])
  signatures = metrics.seq2seq_signatures()
  assert signatures == {'bleu': str(bleu.get_signature()), 'chrf': str(chrf.get_signature())}
  assert signatures['bleu'].startswith('nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:')
  assert signatures['chrf'].startswith('nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:')


def test_copy_baseline_on_modernize_dev():
  task = modernize()
  dev = task.splits['dev']
  baseline = seq2seq_style.copy_baseline(task, dev)
  sources, targets = [e.texts[0] for e in dev], [e.target for e in dev]
  assert baseline['bleu'] == pytest.approx(sacrebleu.corpus_bleu(sources, [targets]).score)
  assert baseline['exact_match'] == pytest.approx(15 / 3088)  # verses the WEB leaves as KJV
  # The figures the README and closing notes quote (sacrebleu 2.6.0, constraints.txt).
  assert baseline == pytest.approx({'bleu': 41.98, 'chrf': 65.79, 'exact_match': 15 / 3088},
                                   abs=0.01)


def test_prediction_rows(tmp_path):
  (tmp_path / 'train.tsv').write_text('source\ttarget\nthou\tyou\n', encoding='utf-8')
  (tmp_path / 'dev.tsv').write_text('source\ttarget\nye\tyou\nhath\thas\n', encoding='utf-8')
  task = load_task(task_config(format='tsv', data_dir=str(tmp_path)))
  split = features.EncodedSplit(task.splits['dev'], arrays={})
  assert split.labelled
  rows = features.prediction_rows(split, ['you', 'has\tit\nnow'])
  assert rows == ['index\tprediction', '0\tyou', '1\thas it now']
