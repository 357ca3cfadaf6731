"""Task readers, input transformations and metrics (no model, no JAX)."""
import codecs
import gzip
import json
import math

import ml_collections
import numpy as np
import pytest

from configs import finetune as finetune_config
from research.tasks import encoding, features, glue, holdout, metrics, readers, squad
from research.tasks.styles import classification, span
from research.tasks.task import load_task


class PieceTokenizer:
  """Deterministic stand-in for the SentencePiece tokenizer: a word becomes pieces of up to
  3 characters (so long words have several sub-tokens), each piece a stable id >= 7."""
  pad_id, unk_id, bos_id, eos_id, cls_id, sep_id, mask_id = range(7)

  def __init__(self):
    self.vocab = {}

  @property
  def vocab_size(self):
    return 7 + len(self.vocab)

  def encode(self, text):
    pieces = [w[i:i + 3] for w in text.split() for i in range(0, len(w), 3)]
    return [self.vocab.setdefault(p, 7 + len(self.vocab)) for p in pieces]

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]


def task_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  finetune_config.add_fields(c)
  for key, value in overrides.items():
    c.task[key] = value
  return c.task


def write(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  if str(path).endswith('.gz'):
    with gzip.open(path, 'wt', encoding='utf-8') as f:
      f.write(text)
  else:
    path.write_text(text, encoding='utf-8')
  return path


# --- GLUE: every task's real column layout (download_glue_data.py), train/dev/test.

GLUE_FILES = {
    'cola': {
        'train.tsv': 'gj04\t1\t\tOur friends will fight.\ngj04\t0\t*\tThem fight friends our.\n',
        'dev.tsv': 'gj05\t0\t*\tThe more we.\ngj05\t1\t\tWe left.\n',
        'test.tsv': 'index\tsentence\n0\tBill left.\n1\tLeft Bill the.\n',
    },
    'sst2': {
        'train.tsv': 'sentence\tlabel\ngreat fun \t1\na dull mess \t0\n',
        'dev.tsv': 'sentence\tlabel\nfun\t1\ndull\t0\n',
        'test.tsv': 'index\tsentence\n0\tso fun\n',
    },
    'mrpc': {
        'train.tsv': ('Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n'
                      '1\t702876\t702977\tHe said "yes".\tHe agreed.\n'
                      '0\t2108705\t2108831\tA cat.\tA dog.\n'),
        'dev.tsv': 'Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA b.\tA b!\n',
        'test.tsv': 'index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tX y.\tX z.\n',
    },
    'stsb': {
        'train.tsv': ('index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t'
                      'sentence2\tscore\n0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\t'
                      'A plane is taking off.\tAn air plane is taking off.\t5.000\n'
                      '1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man plays.\t'
                      'A cat eats.\t0.500\n'),
        'dev.tsv': ('index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t'
                    'sentence2\tscore\n0\tg\tf\ty\t0\tn\tn\tA.\tB.\t2.5\n'),
    },
    'qqp': {
        # The real train file has a few broken lines (fewer fields): they are skipped.
        'train.tsv': ('id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n'
                      '1\t1\t2\tHow do I learn?\tHow can I learn?\t1\n'
                      '2\t3\t4\tWhat is AI?\n'
                      '3\t5\t6\tWhy?\tWhen?\t0\n'),
        'dev.tsv': 'id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n9\t1\t2\tA?\tB?\t0\n',
        'test.tsv': 'id\tquestion1\tquestion2\n7\tC?\tD?\n',
    },
    'mnli': {
        'train.tsv': ('index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\t'
                      'sentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\t'
                      'sentence2\tlabel1\tgold_label\n'
                      '0\t1\t1e\tgov\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tIt rains.\tIt is wet.\t'
                      'entailment\tentailment\n'
                      '1\t2\t2c\tgov\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tIt rains "hard".\t'
                      'It is dry.\tcontradiction\tcontradiction\n'
                      '2\t3\t3n\tgov\t( a )\t( b )\t(ROOT a)\t(ROOT b)\tA.\tB.\tneutral\tneutral\n'),
        'dev_matched.tsv': ('index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\t'
                            'sentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n'
                            '0\t1\t1\tg\ta\tb\ta\tb\tX.\tY.\tneutral\tneutral\tneutral\t'
                            'neutral\tneutral\tneutral\n'),
        'dev_mismatched.tsv': ('index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\t'
                               'sentence2\tlabel1\tgold_label\n0\t1\t1\tg\ta\tb\ta\tb\tP.\tQ.\t'
                               'entailment\tentailment\n'),
        'test_matched.tsv': ('index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\t'
                             'sentence2\n0\t1\t1\tg\ta\tb\ta\tb\tM.\tN.\n'),
    },
    'qnli': {
        'train.tsv': ('index\tquestion\tsentence\tlabel\n0\tWho?\tHe did.\tentailment\n'
                      '1\tWhen?\tBlue.\tnot_entailment\n'),
        'dev.tsv': 'index\tquestion\tsentence\tlabel\n0\tWhy?\tBecause.\tentailment\n',
    },
    'rte': {
        'train.tsv': ('index\tsentence1\tsentence2\tlabel\n0\tA b.\tA.\tentailment\n'
                      '1\tC.\tD.\tnot_entailment\n'),
        'dev.tsv': 'index\tsentence1\tsentence2\tlabel\n0\tE.\tF.\tnot_entailment\n',
    },
    'wnli': {
        'train.tsv': 'index\tsentence1\tsentence2\tlabel\n0\tI saw it.\tIt was seen.\t1\n'
                     '1\tA.\tB.\t0\n',
        'dev.tsv': 'index\tsentence1\tsentence2\tlabel\n0\tC.\tD.\t0\n',
    },
}

GLUE_EXPECTED = {  # task: (first train texts, first train label, type, metrics, symmetric)
    'cola': (('Our friends will fight.',), '1', 'classification', ('mcc',), False),
    'sst2': (('great fun ',), '1', 'classification', ('accuracy',), False),
    'mrpc': (('He said "yes".', 'He agreed.'), '1', 'classification', ('f1', 'accuracy'), True),
    'stsb': (('A plane is taking off.', 'An air plane is taking off.'), '5.000', 'regression',
             ('pearson', 'spearman'), True),
    'qqp': (('How do I learn?', 'How can I learn?'), '1', 'classification', ('accuracy', 'f1'),
            True),
    'mnli': (('It rains.', 'It is wet.'), 'entailment', 'classification', ('accuracy',), False),
    'qnli': (('Who?', 'He did.'), 'entailment', 'classification', ('accuracy',), False),
    'rte': (('A b.', 'A.'), 'entailment', 'classification', ('accuracy',), False),
    'wnli': (('I saw it.', 'It was seen.'), '1', 'classification', ('accuracy',), False),
}


@pytest.mark.parametrize('name', sorted(GLUE_FILES))
def test_glue_reader_columns(name, tmp_path):
  for filename, text in GLUE_FILES[name].items():
    write(tmp_path / filename, text)
  task = load_task(task_config(format='glue', name=name, data_dir=str(tmp_path)))
  texts, label, task_type, task_metrics, symmetric = GLUE_EXPECTED[name]
  first = task.splits['train'][0]
  assert first.texts == texts and first.label == label
  assert (task.type, task.metrics, task.symmetric) == (task_type, task_metrics, symmetric)
  assert task.labels == glue.TASKS[name].labels
  assert all(e.label is not None for e in task.splits['dev'])
  if 'test' in task.splits:  # unlabelled; keeps GLUE's index for the submission file
    assert all(e.label is None for e in task.splits['test'])
    assert task.splits['test'][0].uid in ('0', '7')


def test_glue_specific_layouts(tmp_path):
  for filename, text in GLUE_FILES['cola'].items():
    write(tmp_path / 'cola' / filename, text)
  cola = load_task(task_config(format='glue', name='CoLA', data_dir=str(tmp_path / 'cola')))
  assert [e.label for e in cola.splits['dev']] == ['0', '1']  # header-less file: no row lost
  assert cola.splits['test'][1].texts == ('Left Bill the.',)
  for filename, text in GLUE_FILES['qqp'].items():
    write(tmp_path / 'qqp' / filename, text)
  qqp = load_task(task_config(format='glue', name='qqp', data_dir=str(tmp_path / 'qqp')))
  assert len(qqp.splits['train']) == 2  # the broken line is dropped
  for filename, text in GLUE_FILES['mnli'].items():
    write(tmp_path / 'mnli' / filename, text)
  mnli = load_task(task_config(format='glue', name='mnli', data_dir=str(tmp_path / 'mnli')))
  assert set(mnli.splits) == {'train', 'dev', 'dev_mismatched', 'test'}
  assert mnli.splits['dev'][0].label == 'neutral'  # gold_label, not label1
  assert mnli.splits['dev_mismatched'][0].texts == ('P.', 'Q.')
  with pytest.raises(readers.TaskDataError, match='dev.tsv'):
    load_task(task_config(format='glue', name='rte', data_dir=str(tmp_path / 'qqp' / 'none')))


def test_unseen_glue_style_directory_from_config_alone(tmp_path):
  """A GLUE-style TSV task this code has never heard of: columns and labels from the config."""
  write(tmp_path / 'train.tsv', 'id\tpremise\thypothesis\tverdict\n'
        '1\tA man sleeps.\tA person rests.\tyes\n2\tIt is day.\tIt is night.\tno\n'
        '3\tShe sings.\tShe is loud.\tmaybe\n')
  write(tmp_path / 'dev.tsv.gz', 'id\tpremise\thypothesis\tverdict\n9\tX.\tY.\tno\n')
  task = load_task(task_config(format='tsv', data_dir=str(tmp_path),
                               text_columns='premise,hypothesis', label_column='verdict'))
  assert task.type == 'classification' and task.labels == ('maybe', 'no', 'yes')
  assert task.splits['dev'][0].texts == ('X.', 'Y.') and 'test' not in task.splits
  explicit = load_task(task_config(format='tsv', data_dir=str(tmp_path), labels='no,yes,maybe',
                                   text_columns='premise,hypothesis', label_column='verdict'))
  assert explicit.labels == ('no', 'yes', 'maybe')
  with pytest.raises(readers.TaskDataError, match="no column 'sentence'"):
    load_task(task_config(format='tsv', data_dir=str(tmp_path)))
  with pytest.raises(readers.TaskDataError, match='not in'):
    load_task(task_config(format='tsv', data_dir=str(tmp_path), labels='no,yes',
                          text_columns='premise,hypothesis', label_column='verdict'))


def test_csv_jsonl_headerless_and_regression(tmp_path):
  write(tmp_path / 'csv' / 'train.csv', 'text,score\n"Good, really good",4.5\n"Bad ""film""",1\n')
  write(tmp_path / 'csv' / 'dev.csv', 'text,score\nOk,3\n')
  task = load_task(task_config(format='csv', data_dir=str(tmp_path / 'csv'), type='regression',
                               text_columns='text', label_column='score'))
  assert task.splits['train'][1].texts == ('Bad "film"',)
  assert task.metrics == ('pearson', 'spearman') and task.num_outputs == 1
  write(tmp_path / 'nohead' / 'train.tsv', 'a\t1\tfirst\nb\t0\tsecond\n')
  write(tmp_path / 'nohead' / 'dev.tsv', 'c\t1\tthird\n')
  task = load_task(task_config(format='tsv', data_dir=str(tmp_path / 'nohead'), header=False,
                               text_columns='2', label_column='1', num_labels=2))
  assert task.splits['dev'][0].texts == ('third',) and task.labels == ('0', '1')
  lines = [{'q': 'Where?', 'options': ['here', 'there', 'nowhere'], 'answer': 2},
           {'q': 'Who?', 'options': ['me', 'you', 'them'], 'answer': 0}]
  write(tmp_path / 'mc' / 'train.jsonl', '\n'.join(map(json.dumps, lines)) + '\n')
  write(tmp_path / 'mc' / 'dev.jsonl', json.dumps(lines[0]) + '\n')
  task = load_task(task_config(format='jsonl', data_dir=str(tmp_path / 'mc'),
                               type='multiple_choice', text_columns='q', label_column='answer',
                               choice_columns='options'))
  assert task.splits['train'][0].choices == ('here', 'there', 'nowhere')
  assert task.splits['train'][0].label == 2


def test_conll_reader_and_bio_detection(tmp_path):
  write(tmp_path / 'train.txt', '-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n'
        'German JJ B-NP B-MISC\n\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n')
  write(tmp_path / 'dev.txt', 'Peter\tB-PER\n\n')
  task = load_task(task_config(format='conll', data_dir=str(tmp_path)))
  assert task.type == 'tagging' and task.metrics == ('entity_f1',)
  assert task.splits['train'][1].words == ('Peter', 'Blackburn')
  assert task.splits['train'][1].tags == ('B-PER', 'I-PER')
  assert task.labels == ('B-MISC', 'B-ORG', 'B-PER', 'I-PER', 'O')
  write(tmp_path / 'pos' / 'train.txt', 'The\tat\ndog\tnn\n\nA\tat\n')
  write(tmp_path / 'pos' / 'dev.txt', 'cat\tnn\n')
  pos = load_task(task_config(format='conll', data_dir=str(tmp_path / 'pos')))
  assert pos.metrics == ('accuracy',) and pos.labels == ('at', 'nn')


def test_vendored_tasks_load():
  for name, overrides in finetune_config.VENDORED.items():
    task = load_task(task_config(**overrides, eval_limit=5))
    assert len(task.splits['train']) > 10000 and len(task.splits['dev']) == 5, name
    assert {'train', 'dev', 'test'} <= set(task.splits)
  brown = load_task(task_config(**finetune_config.VENDORED['tagging']))
  assert len(brown.labels) > 80 and brown.metrics == ('accuracy',)


# --- a dev set held out of train (--config.task.dev_fraction)


def labelled_dir(path, counts, test=True):
  """train.tsv with counts[label] rows per label (interleaved), plus a test.tsv; no dev."""
  rows = [f'text {label} {i}\t{label}' for i in range(max(counts.values()))
          for label, n in counts.items() if i < n]
  write(path / 'train.tsv', 'sentence\tlabel\n' + '\n'.join(rows) + '\n')
  if test:
    write(path / 'test.tsv', 'sentence\tlabel\nsome test\tpos\n')
  return str(path)


def test_no_dev_file_suggests_dev_fraction(tmp_path):
  with pytest.raises(readers.TaskDataError,
                     match=r'no dev file .*--config.task.dev_fraction=0.1'):
    load_task(task_config(format='tsv', data_dir=labelled_dir(tmp_path, {'a': 3, 'b': 3})))


def test_dev_fraction_sizes_and_stratification(tmp_path):
  counts = {'pos': 600, 'neg': 300, 'rare': 7}
  task = load_task(task_config(format='tsv', data_dir=labelled_dir(tmp_path, counts),
                               dev_fraction=0.1))
  train, dev = task.splits['train'], task.splits['dev']
  assert list(task.splits) == ['train', 'dev', 'test']
  assert (len(train), len(dev)) == (816, 91)  # round(0.1 * 907) = 91
  dev_counts = {label: sum(e.label == label for e in dev) for label in counts}
  assert dev_counts == {'pos': 60, 'neg': 30, 'rare': 1}  # 0.7 of 'rare' rounds up
  assert not {e.texts for e in train} & {e.texts for e in dev}
  assert len({e.texts for e in train} | {e.texts for e in dev}) == sum(counts.values())
  assert task.labels == ('neg', 'pos', 'rare')
  assert task.dev_split == holdout.DevSplit(0.1, 0, 816, 91)
  # Every class keeps a training example, even one too rare to round to zero.
  assert holdout.dev_counts({'a': 1, 'b': 1, 'c': 10}, 0.5) == {'a': 0, 'b': 0, 'c': 5}
  assert holdout.dev_counts({'a': 2, 'b': 2}, 0.5) == {'a': 1, 'b': 1}


def test_dev_fraction_is_deterministic_and_depends_on_the_seed(tmp_path):
  data_dir = labelled_dir(tmp_path, {'pos': 50, 'neg': 30})

  def dev_texts(**overrides):
    task = load_task(task_config(format='tsv', data_dir=data_dir, dev_fraction=0.25,
                                 **overrides))
    return [e.texts for e in task.splits['dev']]

  first = dev_texts()
  assert dev_texts() == first  # a second load (resume, --mode=eval, another process)
  assert dev_texts(train_limit=10, eval_limit=0) == first  # train_limit cuts after the split
  assert dev_texts(dev_seed=1) != first and len(dev_texts(dev_seed=1)) == len(first)
  # Plain lists, no global RNG: the same in a fresh interpreter, whatever numpy's state.
  np.random.seed(123)
  examples = list(range(40))
  _, dev, _ = holdout.hold_out(examples, 0.25, seed=7)
  assert dev == holdout.hold_out(examples, 0.25, seed=7)[1] and len(dev) == 10
  assert dev == sorted(dev) and dev != list(range(10))  # file order kept, positions shuffled


def test_dev_fraction_tagging_and_errors(tmp_path):
  sentences = '\n\n'.join(f'Word{i}\tB-X\nrest\tO' for i in range(20))
  write(tmp_path / 'conll' / 'train.txt', sentences + '\n')
  task = load_task(task_config(format='conll', data_dir=str(tmp_path / 'conll'),
                               dev_fraction=0.2))
  assert (len(task.splits['train']), len(task.splits['dev'])) == (16, 4)
  with_dev = labelled_dir(tmp_path / 'with_dev', {'a': 3, 'b': 3})
  write(tmp_path / 'with_dev' / 'dev.tsv', 'sentence\tlabel\nx\ta\n')
  with pytest.raises(readers.TaskDataError, match='has a dev split.*set it to 0'):
    load_task(task_config(format='tsv', data_dir=with_dev, dev_fraction=0.1))
  with pytest.raises(ValueError, match='dev_fraction=1.5 must be between 0 and 1'):
    load_task(task_config(format='tsv', data_dir=labelled_dir(tmp_path / 'x', {'a': 3, 'b': 3}),
                          dev_fraction=1.5))
  with pytest.raises(readers.TaskDataError, match='too few to hold out'):
    load_task(task_config(format='tsv', data_dir=labelled_dir(tmp_path / 'y', {'a': 2, 'b': 2}),
                          dev_fraction=0.1))


# --- input transformations


def test_bert_and_gpt_pair_layouts():
  tok = PieceTokenizer()
  a, b = tok.encode('aa bb'), tok.encode('cc')
  bert = encoding.InputStyle.create('bert', tok)
  ids, segments = bert.pack([a, b])
  assert ids == [tok.cls_id, *a, tok.sep_id, *b, tok.sep_id]
  assert segments == [0, 0, 0, 0, 1, 1]
  gpt = encoding.InputStyle.create('gpt', tok)
  ids, segments = gpt.pack([a, b])
  assert ids == [tok.bos_id, *a, tok.sep_id, *b, tok.cls_id]  # start A delim B extract
  assert set(segments) == {0}
  assert encoding.truncate([[1] * 7, [2] * 3], 6) == [[1] * 3, [2] * 3]  # longest first


def test_encode_sequences_padding_orders_and_choices():
  tok = PieceTokenizer()
  examples = [readers.Example(texts=('one two', 'three'), label='yes'),
              readers.Example(texts=('four', 'five six seven'), label='unseen')]
  style = encoding.InputStyle.create('gpt', tok)
  arrays = encoding.encode_sequences(examples, tok, style, 8, task_type='classification',
                                     labels=('no', 'yes'), both_orders=True)
  assert arrays['input_ids'].shape == (2, 2, 8)
  one, three = tok.encode('one two'), tok.encode('three')
  assert list(arrays['input_ids'][0, 0, :7]) == [2, *one, 5, *three, 4]  # 'three' = thr|ee
  assert list(arrays['input_ids'][0, 1, :7]) == [2, *three, 5, *one, 4]
  assert list(arrays['attention_mask'][0, 0]) == [1] * 7 + [0]
  assert list(arrays['labels']) == [1, 0] and list(arrays['label_weights']) == [1, 0]
  assert arrays['input_ids'][1, 0, 7] == tok.cls_id  # truncated rows still end on extract
  mc = [readers.Example(texts=('q',), choices=('a', 'b', 'c'), label=2),
        readers.Example(texts=('r',), choices=('d', 'e'), label=0)]
  arrays = encoding.encode_sequences(mc, tok, encoding.InputStyle.create('bert', tok), 6,
                                     task_type='multiple_choice')
  assert arrays['input_ids'].shape == (2, 3, 6)
  assert arrays['choice_mask'].tolist() == [[1, 1, 1], [1, 1, 0]]
  assert list(arrays['segment_ids'][0, 2, :4]) == [0, 0, 0, 1]
  assert list(arrays['labels']) == [2, 0]


def test_tagging_labels_on_first_subtoken():
  tok = PieceTokenizer()
  example = readers.Example(words=('a', 'international', 'dog'), tags=('at', 'jj', 'nn'))
  style = encoding.InputStyle.create('bert', tok)
  arrays, first = encoding.encode_tagging([example], tok, style, 16, labels=('at', 'jj', 'nn'))
  # [CLS] a int ern ati ona l dog [SEP]: 'international' has 5 pieces
  assert first.tolist() == [[1, 2, 7]]
  assert arrays['label_weights'][0].nonzero()[0].tolist() == [1, 2, 7]
  assert arrays['labels'][0, [1, 2, 7]].tolist() == [0, 1, 2]
  assert arrays['input_ids'][0, 8] == tok.sep_id
  # Cut off by max_len: the last word gets no position (scored as wrong, not dropped).
  arrays, first = encoding.encode_tagging([example], tok, style, 6, labels=('at', 'jj', 'nn'))
  assert first.tolist() == [[1, 2, -1]]
  assert arrays['label_weights'][0].sum() == 2


def test_squad_windows_and_span_decoding(tmp_path):
  context = 'The cat sat on the mat near a dog. ' * 3 + 'Paris is the capital of France.'
  answer_start = context.index('Paris')
  data = {'data': [{'title': 't', 'paragraphs': [{'context': context, 'qas': [
      {'id': 'q1', 'question': 'What is the capital?',
       'answers': [{'text': 'Paris', 'answer_start': answer_start},
                   {'text': 'Paris is', 'answer_start': answer_start}]}]}]}]}
  write(tmp_path / 'train-v1.1.json', json.dumps(data))
  write(tmp_path / 'dev-v1.1.json', json.dumps(data))
  task = load_task(task_config(format='squad', data_dir=str(tmp_path)))
  assert task.type == 'span' and task.metrics == ('f1', 'exact_match')
  tok = PieceTokenizer()
  style = encoding.InputStyle.create('bert', tok)
  arrays, feature_example, token_to_word, words = squad.encode(
      task.splits['train'], tok, style, 24, doc_stride=8, max_query_len=6)
  assert len(feature_example) > 1 and set(feature_example) == {0}  # several windows
  has = arrays['start_positions'] > 0
  assert has.any() and not has.all()  # windows without the answer point at [CLS]
  f = int(np.flatnonzero(has)[0])
  s = arrays['start_positions'][f]
  assert words[0][token_to_word[f, s]] == 'Paris'
  # Decoding: logits peaked on the answer give its words back.
  start = np.full(arrays['input_ids'].shape, -5.0)
  end = np.full(arrays['input_ids'].shape, -5.0)
  start[f, s], end[f, arrays['end_positions'][f]] = 5.0, 5.0
  spans = squad.best_spans(start, end, feature_example, token_to_word, words, max_answer_len=5)
  assert spans == ['Paris']
  split = features.EncodedSplit(task.splits['dev'], arrays, feature_example, token_to_word,
                                words=words)
  predictions = span.to_predictions(split, {'start': start, 'end': end},
                                    task_config().max_answer_len)
  assert task.score(task.splits['dev'], predictions) == {'f1': 1.0, 'exact_match': 1.0}


# --- metrics against hand-computed values


def test_classification_metrics():
  gold, pred = [1, 1, 1, 0, 0, 0, 1, 0], [1, 1, 0, 0, 0, 1, 1, 1]
  # tp=3 fn=1 tn=2 fp=2
  assert metrics.accuracy(gold, pred) == 5 / 8
  assert metrics.f1(gold, pred) == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
  assert metrics.matthews_corrcoef(gold, pred) == pytest.approx(
      (3 * 2 - 2 * 1) / math.sqrt(5 * 4 * 4 * 3))
  assert metrics.matthews_corrcoef([1, 1, 0], [1, 1, 1]) == 0.0  # undefined -> 0 (sklearn)
  assert metrics.matthews_corrcoef([0, 1, 2, 2], [0, 1, 2, 2]) == pytest.approx(1.0)


def test_correlations_with_ties():
  gold, pred = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 4.0]
  # deviations: gold -1.5 -.5 .5 1.5; pred -1.75 .25 1.25 .25
  assert metrics.pearson(gold, pred) == pytest.approx(3.5 / math.sqrt(5 * 4.75))
  # ranks: gold 1 2 3 4, pred 1 2.5 4 2.5 (tie shares 2.5)
  assert metrics.spearman(gold, pred) == pytest.approx(3 / math.sqrt(5 * 4.5))
  assert metrics.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_entity_f1_conlleval_rules():
  gold = [['B-PER', 'I-PER', 'O', 'B-LOC'], ['B-ORG', 'O']]
  pred = [['B-PER', 'I-PER', 'O', 'B-ORG'], ['I-ORG', 'O']]  # I- start counts as a chunk
  scores = metrics.entity_scores(gold, pred)
  assert scores['entity_precision'] == pytest.approx(2 / 3)
  assert scores['entity_recall'] == pytest.approx(2 / 3)
  assert scores['entity_f1'] == pytest.approx(2 / 3)
  assert metrics.chunks(['B-A', 'I-B', 'I-B', 'O']) == {(0, 1, 'A'), (1, 3, 'B')}
  assert metrics.token_accuracy([['a', 'b', 'c']], [['a', None, 'c']]) == pytest.approx(2 / 3)


def test_squad_normalisation_and_scores():
  assert metrics.normalize_answer('The  Eiffel-Tower, in PARIS!') == 'eiffeltower in paris'
  assert metrics.normalize_answer('an apple and a pear') == 'apple and pear'
  assert metrics.squad_f1('the big cat', 'a big dog') == pytest.approx(0.5)
  scores = metrics.squad_scores([('Paris', 'the city of Paris'), ('1990',)],
                                ['paris.', 'in 1990 or 1991'])
  assert scores['exact_match'] == pytest.approx(0.5)
  assert scores['f1'] == pytest.approx((1.0 + 2 * (1 / 4) * 1 / (1 / 4 + 1)) / 2)


def test_task_score_and_majority_baseline(tmp_path):
  write(tmp_path / 'train.tsv', 'sentence\tlabel\na\t1\nb\t1\nc\t0\n')
  write(tmp_path / 'dev.tsv', 'sentence\tlabel\nd\t0\ne\t1\nf\t1\ng\t1\n')
  task = load_task(task_config(format='tsv', data_dir=str(tmp_path), metrics='accuracy,f1,mcc'))
  scores = task.score(task.splits['dev'], [0, 1, 0, 1])
  assert scores == pytest.approx({'accuracy': 0.75, 'f1': 0.8,
                                  'mcc': metrics.matthews_corrcoef([0, 1, 1, 1], [0, 1, 0, 1])})
  baseline = classification.majority_baseline(task, task.splits['train'], task.splits['dev'])
  assert baseline['accuracy'] == 0.75


# --- files as they come: a byte-order mark, Windows line ends, huge fields, other encodings

QUIRKY = {  # format -> (train file, its text), all with a BOM and '\r\n' line ends
    'tsv': ('train.tsv', 'sentence\tlabel\nA good film.\t1\nA bad one.\t0\n'),
    'csv': ('train.csv', 'sentence,label\n"Good,\nreally.",1\nBad.,0\n'),  # a field spans lines
    'jsonl': ('train.jsonl', '{"sentence": "A good film.", "label": 1}\n'
              '{"sentence": "A bad one.", "label": 0}\n'),
    'conll': ('train.txt', 'The\tat\ndog\tnn\n\nA\tat\n'),
}


def _quirky_task(tmp_path, fmt, transform=lambda raw: raw):
  name, text = QUIRKY[fmt]
  raw = codecs.BOM_UTF8 + text.replace('\n', '\r\n').encode('utf-8')
  (tmp_path / name).write_bytes(transform(raw))
  (tmp_path / name.replace('train', 'dev')).write_bytes(raw)
  columns = {} if fmt == 'conll' else dict(text_columns='sentence', label_column='label')
  return tmp_path / name, load_task(task_config(format=fmt, data_dir=str(tmp_path), **columns))


@pytest.mark.parametrize('fmt', list(QUIRKY))
def test_bom_and_crlf_task_files_read_as_plain_text(tmp_path, fmt):
  _, task = _quirky_task(tmp_path, fmt)
  train = task.splits['train']
  if fmt == 'conll':
    assert [e.words for e in train] == [('The', 'dog'), ('A',)]
    assert train[0].tags == ('at', 'nn')
  elif fmt == 'csv':
    assert [e.texts for e in train] == [('Good,\r\nreally.',), ('Bad.',)]  # as quoted
    assert [e.label for e in train] == ['1', '0']
  else:
    assert [e.texts for e in train] == [('A good film.',), ('A bad one.',)]
    assert [str(e.label) for e in train] == ['1', '0']


@pytest.mark.parametrize('fmt', list(QUIRKY))
def test_task_file_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path, fmt):
  def latin1_on_line_2(raw):
    lines = raw.split(b'\r\n')
    lines[1] = b'\xc0' + lines[1]  # 'À' in Latin-1
    return b'\r\n'.join(lines)
  path = tmp_path / QUIRKY[fmt][0]
  with pytest.raises(ValueError) as error:  # research.main: one `error:` line
    _quirky_task(tmp_path, fmt, latin1_on_line_2)
  assert str(error.value).startswith(f'{path}:2: not UTF-8 (byte 0xc0 at byte 1 of the line)')
  assert '\n' not in str(error.value)


def test_ten_megabyte_field_and_bad_jsonl_line(tmp_path):
  long_text = ' '.join(['A long review of a long film.'] * 350_000)  # 10.5 MB on one line
  write(tmp_path / 'tsv' / 'train.tsv', f'sentence\tlabel\n{long_text}\t1\nShort.\t0\n')
  write(tmp_path / 'tsv' / 'dev.tsv', 'sentence\tlabel\nOk.\t1\n')
  task = load_task(task_config(format='tsv', data_dir=str(tmp_path / 'tsv'),
                               text_columns='sentence', label_column='label'))
  assert task.splits['train'][0].texts == (long_text,)
  write(tmp_path / 'jsonl' / 'train.jsonl', '{"s": "ok", "y": 1}\n{"s": "cut off", "y\n')
  write(tmp_path / 'jsonl' / 'dev.jsonl', '{"s": "ok", "y": 1}\n')
  with pytest.raises(readers.TaskDataError) as error:
    load_task(task_config(format='jsonl', data_dir=str(tmp_path / 'jsonl'), text_columns='s',
                          label_column='y'))
  assert str(error.value).startswith(f'{tmp_path}/jsonl/train.jsonl:2: not JSON ')


# --- Malformed rows: dropped or repaired, counted per file with file:line; strict: an error.

def test_malformed_tsv_rows_are_counted_with_their_lines_or_with_strict_an_error(tmp_path):
  """A row without its tab (one field) among three is dropped, one with an extra tab keeps
  its first fields, and an empty text is dropped: each counted with its file:line."""
  write(tmp_path / 'train.tsv', 'sentence\tlabel\nGood film.\t1\nno tab here 0\nBad.\t0\n'
        'Tab\tinside\t1\n\t0\n')
  write(tmp_path / 'dev.tsv', 'sentence\tlabel\nOk.\t1\nMeh.\t0\n')
  task = load_task(task_config(format='tsv', data_dir=str(tmp_path)))
  train = str(tmp_path / 'train.tsv')
  assert [e.texts for e in task.splits['train']] == [('Good film.',), ('Bad.',), ('Tab',)]
  assert task.dropped.counts == {train: 3} and task.dropped.read == {
      train: 5, str(tmp_path / 'dev.tsv'): 2}
  assert task.dropped.first == [
      f'{train}:3: 1 field where the header has 2 (dropped)',
      f'{train}:5: 3 fields where the header has 2 (repaired: the extra fields ignored)',
      f"{train}:6: empty 'sentence' (dropped)"]
  message = task.dropped.message()
  assert message.startswith(f'task data: 3 malformed records dropped or repaired ({train}: 3 '
                            f'of 5); first: {train}:3: ') and '\n' not in message
  assert task.dropped.log_fields() == {'dropped_rows': 3, 'dropped_rows_per_file': {train: 3},
                                       'dropped_rows_first': task.dropped.first}
  with pytest.raises(readers.TaskDataError) as error:
    load_task(task_config(format='tsv', data_dir=str(tmp_path), strict=True))
  assert str(error.value).startswith(f'{train}:3: 1 field where the header has 2; fix or '
                                     'delete that row')
  clean = load_task(task_config(format='tsv', data_dir=str(tmp_path), train=str(
      tmp_path / 'dev.tsv'), strict=True))
  assert clean.dropped.total == 0 and clean.dropped.log_fields() == {'dropped_rows': 0}


def test_glue_qqp_broken_line_is_counted(tmp_path):
  for filename, text in GLUE_FILES['qqp'].items():
    write(tmp_path / filename, text)
  qqp = load_task(task_config(format='glue', name='qqp', data_dir=str(tmp_path)))
  assert qqp.dropped.counts == {str(tmp_path / 'train.tsv'): 1}
  with pytest.raises(readers.TaskDataError, match=r'train\.tsv:\d+: '):
    load_task(task_config(format='glue', name='qqp', data_dir=str(tmp_path), strict=True))


def test_jsonl_record_missing_a_column_and_conll_line_without_tag(tmp_path):
  write(tmp_path / 'j' / 'train.jsonl', '{"s": "ok", "y": 1}\n\n{"y": 0}\n{"s": "no label"}\n'
        '{"s": "fine", "y": 0}\n')
  write(tmp_path / 'j' / 'dev.jsonl', '{"s": "ok", "y": 1}\n')
  task = load_task(task_config(format='jsonl', data_dir=str(tmp_path / 'j'), text_columns='s',
                               label_column='y'))
  path = str(tmp_path / 'j' / 'train.jsonl')
  assert [e.texts for e in task.splits['train']] == [('ok',), ('fine',)]
  assert task.dropped.first == [f"{path}:3: no 's' (dropped)", f"{path}:4: no 'y' (dropped)"]
  with pytest.raises(readers.TaskDataError, match=f"{path}:3: no 's'; fix or delete"):
    load_task(task_config(format='jsonl', data_dir=str(tmp_path / 'j'), text_columns='s',
                          label_column='y', strict=True))
  with pytest.raises(readers.TaskDataError, match="no column 'text'"):  # no record has it
    load_task(task_config(format='jsonl', data_dir=str(tmp_path / 'j'), text_columns='text',
                          label_column='y'))
  write(tmp_path / 'c' / 'train.txt', 'A\tB-X\nb\tO\n\nC\tO\nlost\nd\tO\n\nE\tB-X\n')
  write(tmp_path / 'c' / 'dev.txt', 'A\tB-X\n')
  tagging = load_task(task_config(format='conll', data_dir=str(tmp_path / 'c')))
  conll = str(tmp_path / 'c' / 'train.txt')
  assert [e.words for e in tagging.splits['train']] == [('A', 'b'), ('E',)]
  assert tagging.dropped.first == [
      f"{conll}:5: expected \"token<TAB>tag\", got 'lost' (its sentence dropped)"]
  assert tagging.dropped.message().startswith(f'task data: 1 malformed record dropped or '
                                              f'repaired ({conll}: 1 of 3)')
  with pytest.raises(readers.TaskDataError, match=f'{conll}:5: expected'):
    load_task(task_config(format='conll', data_dir=str(tmp_path / 'c'), strict=True))
