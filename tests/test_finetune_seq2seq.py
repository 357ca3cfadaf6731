"""Fine-tuning for generation (seq2seq tasks for every arch, T5's text-to-text) and BART's
classification head, from tiny pretrained workdirs."""
import json

import pytest

from research import finetune
from tests.test_finetune import (Pretrained, finetune_cfg, read_metrics,
                                 sentiment_dir)


@pytest.fixture(scope='module')
def pretrained(small_corpus, tmp_path_factory):
  return Pretrained(small_corpus, tmp_path_factory.mktemp('pretrained'))


def seq2seq_dir(path, rows=24):
  """Old -> new spelling pairs, as task=modernize's verses (source/target columns)."""
  path.mkdir(parents=True, exist_ok=True)
  old = ['thou art', 'ye have', 'he saith', 'thee and thine']
  new = ['you are', 'you have', 'he says', 'you and yours']
  for split, n in (('train', rows), ('dev', 8)):
    lines = ['source\ttarget'] + [f'{old[i % 4]} {i}\t{new[i % 4]} {i}' for i in range(n)]
    (path / f'{split}.tsv').write_text('\n'.join(lines) + '\n')
  return str(path)


# BART's path is T5's and the causal GPT's the prefix LM's but for the mask: `make test-all`.
@pytest.mark.parametrize('name,prefix', [
    ('t5', False), pytest.param('bart', False, marks=pytest.mark.slow),
    pytest.param('gpt', False, marks=pytest.mark.slow), ('gpt', True), ('bert', False)])
def test_finetune_seq2seq(name, prefix, pretrained, tmp_path):
  """Teacher-forced training of the pretrained model itself (an encoder: UniLM's masked
  targets under the seq2seq mask; a decoder: causal or prefix LM); dev decoded and scored by
  BLEU / chrF beside the copy-the-source baseline; --mode=eval reloads and decodes the same."""
  config = finetune_cfg(seq2seq_dir(tmp_path / 'data'), pretrained[name], task__type='seq2seq',
                        task__metrics='bleu,chrf,exact_match', task__max_target_len=12,
                        finetune__bidirectional_prompt=prefix)
  workdir = tmp_path / 'run'
  results = finetune.run_finetune(config, str(workdir))
  assert {'dev/bleu', 'dev/chrf', 'dev/exact_match', 'dev/perplexity', 'dev/loss'} <= set(results)
  start = next(r for r in read_metrics(workdir) if r.get('event') == 'start')
  arch = {'gpt': 'decoder', 'bert': 'encoder'}.get(name, 'encoder_decoder')
  assert start['baseline/bleu'] > 0 and start['arch'] == arch
  ft, _ = finetune.make_finetune(config, str(workdir))
  assert ('prefix_len' in ft.splits['train'].arrays) == (prefix or name == 'bert')
  lines = (workdir / 'predictions' / 'dev.tsv').read_text().splitlines()
  assert lines[0] == 'index\tprediction' and len(lines) == 9
  assert finetune.evaluate_finetuned(config, str(workdir)) == results
  assert json.loads((workdir / 'model.json').read_text())['arch'] == start['arch']


def test_text_to_text_classification_t5(pretrained, tmp_path):
  """T5 Sec 2.4: the label is written as a word and scored by exact match with it."""
  config = finetune_cfg(sentiment_dir(tmp_path / 'data'), pretrained['t5'],
                        finetune__text_to_text=True, finetune__label_words='bad,good')
  ft, _ = finetune.make_finetune(config, str(tmp_path / 'run'))
  assert ft.style.generates and ft.task.splits['dev'][0].target in ('bad', 'good')
  assert ft.task.splits['dev'][0].texts[0].startswith('sentence: ')
  arrays = ft.splits['train'].arrays  # every target is its whole word, then </s>
  written = [ft.tokenizer.decode(t[w > 0][:-1].tolist())
             for t, w in zip(arrays['targets'], arrays['weights'])]
  assert written == [e.target for e in ft.task.splits['train']]
  results = finetune.run_finetune(config, str(tmp_path / 'run'))
  assert 0 <= results['dev/accuracy'] <= 1 and 'dev/perplexity' in results
  predictions = (tmp_path / 'run' / 'predictions' / 'dev.tsv').read_text().splitlines()[1:]
  assert {p.split('\t')[1] for p in predictions} <= {'0', '1', ''}  # '': wrote no label word


def test_text_to_text_label_word_longer_than_the_target_is_refused(pretrained, tmp_path):
  """A label word cut to the target length is never written whole, so never matched."""
  config = finetune_cfg(sentiment_dir(tmp_path / 'data'), pretrained['t5'],
                        finetune__text_to_text=True, task__max_target_len=4,
                        finetune__label_words='not_equivalent,equivalent')
  with pytest.raises(ValueError, match="label word 'not_equivalent' is .*max_target_len"):
    finetune.make_finetune(config, str(tmp_path / 'run'))


@pytest.mark.slow  # the head's shapes: test_finetune.py::test_task_model_shapes[encoder_decoder]
def test_bart_classification_head(pretrained, tmp_path):
  """BART Sec 3.1: encoder and decoder read the same input; the last decoder state is classified."""
  config = finetune_cfg(sentiment_dir(tmp_path / 'data'), pretrained['bart'])
  results = finetune.run_finetune(config, str(tmp_path / 'run'))
  assert 0 <= results['dev/accuracy'] <= 1
  ft, _ = finetune.make_finetune(config, str(tmp_path / 'run'))
  assert not ft.style.generates and 'encoder_decoder' in ft.abstract_params
