"""Fine-tuning: heads and input transforms on the model, then short end-to-end runs from tiny
pretrained workdirs (BERT and GPT) and from scratch, eval mode and exact resume. Generation
tasks and the encoder-decoders' heads: test_finetune_seq2seq.py."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import (bart as bart_config, bert as bert_config, finetune as finetune_config,
                     gpt as gpt_config, t5 as t5_config)
from research import checkpointing, finetune, train
from research.models import task_model
from research.models.config import ModelConfig
from research.models.finetune_heads import BiLstm, last_token
from tests.conftest import REPO, run_main

CFG = ModelConfig(vocab_size=40, max_len=32, d_model=16, num_layers=2, num_heads=2, d_ff=32,
                  type_vocab_size=2, dropout=0.0, attention_dropout=0.0)


def read_metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def override(config, **values) -> ml_collections.ConfigDict:
  """config with dotted-key overrides ('train.steps': 2 -> train__steps=2)."""
  config = config.copy_and_resolve_references()
  for key, value in values.items():
    *parents, leaf = key.split('__')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config.lock()


# --- model level


def test_last_token_reads_the_last_real_position():
  hidden = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
  mask = jnp.array([[1, 1, 0, 0], [1, 1, 1, 1]])
  np.testing.assert_array_equal(last_token(hidden, mask), hidden[jnp.array([0, 1]),
                                                                 jnp.array([1, 3])])
  assert last_token(hidden, jnp.zeros((2, 4), jnp.int32)).shape == (2, 3)  # empty rows: pos 0


def test_gpt_classifier_reads_extract_token_and_ignores_padding():
  model = task_model.TaskModel(CFG.replace(arch='decoder'), 'classification', 3)
  ids = jnp.array([[[2, 11, 12, 5, 13, 4, 0, 0]]])  # start A delim B extract pad pad
  mask = (ids != 0).astype(jnp.int32)
  params = task_model.init_params(model, 8, 1, jax.random.PRNGKey(0))
  logits = lambda i: model.apply({'params': params}, i, jnp.zeros_like(i), mask)['logits']
  garbage_padding = ids.at[..., 6:].set(33)  # behind the mask and after the extract token
  np.testing.assert_allclose(logits(ids), logits(garbage_padding), atol=1e-6)
  other_extract = ids.at[..., 5].set(7)
  assert not np.allclose(logits(ids), logits(other_extract))
  other_first = ids.at[..., 1].set(20)  # the extract state has seen the whole input
  assert not np.allclose(logits(ids), logits(other_first))


@pytest.mark.parametrize('arch', ['encoder', 'decoder', 'encoder_decoder'])
@pytest.mark.parametrize('task_type,inputs,expected', [
    ('classification', (2, 1, 8), (2, 3)), ('regression', (2, 2, 8), (2,)),
    ('multiple_choice', (2, 4, 8), (2, 4)), ('tagging', (2, 8), (2, 8, 3)),
    ('span', (2, 8), (2, 8))])
def test_task_model_shapes(arch, task_type, inputs, expected):
  model = task_model.TaskModel(CFG.replace(arch=arch), task_type,
                               3 if task_type != 'span' else 2,
                               bilstm_size=4 if arch == 'decoder' else 0, decoder_start_id=0)
  ids = jnp.ones(inputs, jnp.int32)
  params = task_model.init_params(model, 8, inputs[1] if len(inputs) == 3 else 1,
                                  jax.random.PRNGKey(0))
  out = model.apply({'params': params}, ids, jnp.zeros_like(ids), jnp.ones_like(ids))
  logits = out['logits']['start'] if task_type == 'span' else out['logits']
  assert logits.shape == expected
  assert (out['lm_logits'] is None) == (arch != 'decoder')
  assert ('bilstm' in params) == (arch == 'decoder')
  assert task_model.BACKBONES[arch] in params


def test_bilstm_summary_ignores_padding():
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 5, 6))
  lstm = BiLstm(4)
  params = lstm.init(jax.random.PRNGKey(0), x, jnp.ones((1, 5), jnp.int32))
  padded = jnp.concatenate([x, 100 * jnp.ones((1, 3, 6))], axis=1)
  mask = jnp.array([[1] * 5 + [0] * 3])
  out, summary = lstm.apply(params, x, jnp.ones((1, 5), jnp.int32))
  out_p, summary_p = lstm.apply(params, padded, mask)
  np.testing.assert_allclose(summary, summary_p, atol=1e-5)
  np.testing.assert_allclose(out, out_p[:, :5], atol=1e-5)
  assert out.shape == (1, 5, 8)


# --- end to end


def tiny_pretrain(config, corpus, workdir):
  config = override(config, data__corpus=corpus, train__steps=2, data__tokenizer__vocab_size=400,
                    data__max_seq_len=32, train__batch_size=8, train__eval_batch_size=8,
                    train__eval_batches=1, train__log_every=1, optim__warmup_steps=1)
  train.train_and_evaluate(config, str(workdir))
  return str(workdir)


class Pretrained(dict):
  """family -> workdir of a 2-step tiny pretraining run, trained on first use (a test file
  pays only for the families it reads)."""
  CONFIGS = {'bert': bert_config, 'gpt': gpt_config, 't5': t5_config, 'bart': bart_config}

  def __init__(self, corpus, root):
    super().__init__()
    self.corpus, self.root = corpus, root

  def __missing__(self, family):
    self[family] = tiny_pretrain(self.CONFIGS[family].get_config('variant=tiny'), self.corpus,
                                 self.root / family)
    return self[family]


@pytest.fixture(scope='module')
def pretrained(small_corpus, tmp_path_factory):
  return Pretrained(small_corpus, tmp_path_factory.mktemp('pretrained'))


WORDS = ('good fine great nice', 'bad poor awful dull', 'the a film movie plot it was')


def sentiment_dir(path, rows=48):
  rng = np.random.default_rng(0)
  path.mkdir(parents=True, exist_ok=True)
  for split, n in (('train', rows), ('dev', 16)):
    lines = ['sentence\tlabel']
    for _ in range(n):
      label = int(rng.integers(2))
      words = list(rng.choice(WORDS[2].split(), 4)) + [rng.choice(WORDS[1 - label].split())]
      lines.append(' '.join(rng.permutation(words)) + f'\t{label}')
    (path / f'{split}.tsv').write_text('\n'.join(lines) + '\n')
  return str(path)


def finetune_cfg(task_dir, init_from='', steps=2, **overrides):
  c = finetune_config.get_config(f'task=custom,init_from={init_from}')
  values = dict(task__format='tsv', task__data_dir=task_dir, finetune__epochs=0.0,
                train__steps=steps, train__batch_size=8, train__eval_batch_size=8,
                train__log_every=1, data__max_seq_len=24, optim__warmup_steps=1,
                finetune__warmup_fraction=0.0)
  values.update(overrides)
  return override(c, **values)


def test_finetune_bert_from_pretrained_workdir(pretrained, tmp_path):
  task_dir = sentiment_dir(tmp_path / 'data')
  with open(os.path.join(task_dir, 'train.tsv'), 'a') as f:
    f.write('a row without its tab 1\n')  # line 50: dropped, counted in the start event
  config = finetune_cfg(task_dir, pretrained['bert'])
  workdir = tmp_path / 'run'
  results = finetune.run_finetune(config, str(workdir))
  assert set(results) >= {'dev/accuracy', 'dev/loss'}
  records = read_metrics(workdir)
  assert [r['step'] for r in records if 'train/loss' in r] == [1, 2]
  start = next(r for r in records if r.get('event') == 'start')
  assert start['arch'] == 'encoder' and 'baseline/accuracy' in start
  assert start['train_examples'] == 48 and start['dropped_rows'] == 1
  assert start['dropped_rows_first'] == [f'{task_dir}/train.tsv:50: 1 field where the header '
                                         'has 2 (dropped)']
  for name in ('pretrained.json', 'tokenizer.model', 'config.json', 'predictions/dev.tsv'):
    assert (workdir / name).exists(), name
  assert (workdir / 'checkpoints' / '2').is_dir()
  lines = (workdir / 'predictions' / 'dev.tsv').read_text().splitlines()
  assert lines[0] == 'index\tprediction' and len(lines) == 1 + 16  # GLUE submission format
  assert {line.split('\t')[1] for line in lines[1:]} <= {'0', '1'}

  # The encoder starts from the pretraining checkpoint, bit for bit; the head is new.
  ft, loaded = finetune.make_finetune(config, str(tmp_path / 'fresh'), need_params=True)
  fresh = finetune.training_state(ft).init_state()
  state = finetune._load_pretrained(ft, fresh, loaded)  # noqa: SLF001
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params['encoder']),
               jax.device_get(loaded.params['encoder']))  # EncoderLM's encoder, heads dropped
  assert set(state.params) == {'encoder', 'head'}

  # --mode=eval appends the same metrics again.
  again = finetune.evaluate_finetuned(config, str(workdir))
  assert again['dev/accuracy'] == results['dev/accuracy']
  assert sum('dev/accuracy' in r for r in read_metrics(workdir)) == 2

  # The same workdir with another init_from is refused, not silently mixed.
  with pytest.raises(ValueError, match='init_from'):
    finetune.run_finetune(finetune_cfg(task_dir, pretrained['gpt']), str(workdir))


def test_finetune_gpt_pair_both_orders_with_lm_loss(pretrained, tmp_path):
  data = tmp_path / 'pairs'
  data.mkdir()
  rows = ['s1\ts2\ty'] + [f'a b c {i}\tc b a {i % 3}\t{i % 2}' for i in range(24)]
  (data / 'train.tsv').write_text('\n'.join(rows) + '\n')
  (data / 'dev.tsv').write_text('\n'.join(rows[:9]) + '\n')
  config = finetune_cfg(str(data), pretrained['gpt'], task__text_columns='s1,s2',
                        task__label_column='y', task__symmetric=True, task__metrics='accuracy,f1')
  workdir = tmp_path / 'run'
  results = finetune.run_finetune(config, str(workdir))
  assert {'dev/accuracy', 'dev/f1', 'dev/lm_loss'} <= set(results)
  train_records = [r for r in read_metrics(workdir) if 'train/loss' in r]
  assert all('train/lm_loss' in r for r in train_records)
  ft, _ = finetune.make_finetune(config, str(workdir))
  assert ft.model_cfg.arch == 'decoder' and ft.style.inputs.name == 'gpt'
  assert ft.splits['train'].arrays['input_ids'].shape[1] == 2  # both orders


def test_finetune_from_scratch_tagging_with_bilstm(pretrained, tmp_path):
  data = tmp_path / 'pos'
  data.mkdir()
  sentence = 'The\tat\ndog\tnn\nbarked\tvbd\n.\t.\n\n'
  (data / 'train.txt').write_text(sentence * 12)
  (data / 'dev.txt').write_text(sentence * 3)
  config = finetune_cfg(str(data), '', task__format='conll', model__arch='decoder',
                        finetune__bilstm_size=8,
                        data__tokenizer__path=os.path.join(pretrained['bert'], 'tokenizer.model'),
                        model__num_layers=1)
  results = finetune.run_finetune(config, str(tmp_path / 'run'))
  assert 0 <= results['dev/accuracy'] <= 1
  record = json.loads((tmp_path / 'run' / 'pretrained.json').read_text())
  assert record['init_from'] == '' and record['model']['arch'] == 'decoder'
  lines = (tmp_path / 'run' / 'predictions' / 'dev.tsv').read_text().split('\n')
  assert lines[0].startswith('The\t')


@pytest.mark.slow  # their encodings and heads are tested in test_tasks / test_task_model_shapes
def test_finetune_span_and_multiple_choice(pretrained, tmp_path):
  context = 'The cat sat on the mat . Paris is the capital of France .'
  squad = {'data': [{'title': 't', 'paragraphs': [{'context': context, 'qas': [
      {'id': f'q{i}', 'question': 'What is the capital ?',
       'answers': [{'text': 'Paris', 'answer_start': context.index('Paris')}]}
      for i in range(8)]}]}]}
  (tmp_path / 'squad').mkdir()
  for split in ('train', 'dev'):
    (tmp_path / 'squad' / f'{split}.json').write_text(json.dumps(squad))
  config = finetune_cfg(str(tmp_path / 'squad'), pretrained['bert'], task__format='squad',
                        task__doc_stride=8, task__max_query_len=8)
  results = finetune.run_finetune(config, str(tmp_path / 'span'))
  assert {'dev/f1', 'dev/exact_match'} <= set(results)

  (tmp_path / 'mc').mkdir()
  rows = [json.dumps({'q': f'pick {i}', 'c': ['one', 'two', 'three'], 'y': i % 3})
          for i in range(16)]
  for split in ('train', 'dev'):
    (tmp_path / 'mc' / f'{split}.jsonl').write_text('\n'.join(rows) + '\n')
  config = finetune_cfg(str(tmp_path / 'mc'), pretrained['gpt'], task__format='jsonl',
                        task__type='multiple_choice', task__text_columns='q',
                        task__label_column='y', task__choice_columns='c')
  results = finetune.run_finetune(config, str(tmp_path / 'mc_run'))
  assert 0 <= results['dev/accuracy'] <= 1


def test_finetune_resume_equals_uninterrupted(pretrained, tmp_path, monkeypatch):
  task_dir = sentiment_dir(tmp_path / 'data')
  config = finetune_cfg(task_dir, pretrained['bert'], steps=4, checkpoint__every=2)
  full = finetune.run_finetune(config, str(tmp_path / 'full'))

  class Crash(Exception):
    pass
  original = checkpointing.Checkpointer.save

  def save_then_crash(self, step, state, data_state):
    original(self, step, state, data_state)
    if step == 2:
      self.wait()
      raise Crash
  monkeypatch.setattr(checkpointing.Checkpointer, 'save', save_then_crash)
  with pytest.raises(Crash):
    finetune.run_finetune(config, str(tmp_path / 'resumed'))
  monkeypatch.setattr(checkpointing.Checkpointer, 'save', original)
  resumed = finetune.run_finetune(config, str(tmp_path / 'resumed'))
  assert resumed == full
  losses = lambda d: {r['step']: r['train/loss'] for r in read_metrics(d) if 'train/loss' in r}
  assert losses(tmp_path / 'resumed') == losses(tmp_path / 'full')
  # A finished run started again does not train further.
  again = finetune.run_finetune(config, str(tmp_path / 'resumed'))
  assert again['dev/accuracy'] == full['dev/accuracy']
  assert max(losses(tmp_path / 'resumed')) == 4


HF_FIXTURES = os.path.join(REPO, 'tests', 'fixtures')


@pytest.mark.parametrize('name', ['hf_bert_tiny',
                                  pytest.param('hf_gpt2_tiny', marks=pytest.mark.slow)])
def test_finetune_from_imported_hf_checkpoint(name, tmp_path):
  """init_from may be an HF directory: its weights start the backbone, its own vocabulary
  (kept in the workdir) encodes the task, and --mode=eval reloads both."""
  from research import convert
  directory = os.path.join(HF_FIXTURES, name)
  imported = convert.load(directory)
  config = finetune_cfg(sentiment_dir(tmp_path / 'data'), directory)
  workdir = str(tmp_path / 'run')
  ft, pretrained = finetune.make_finetune(config, workdir, need_params=True)
  assert ft.model_cfg == imported.cfg
  assert ft.tokenizer.encode('the cat') == imported.tokenizer.encode('the cat')
  key = task_model.BACKBONES[ft.model_cfg.arch]
  state = finetune._load_pretrained(ft, finetune.training_state(ft).init_state(), pretrained)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state.params[key]),
               jax.tree.map(np.asarray, task_model.pretrained_backbone(imported.cfg,
                                                                       imported.params)))
  results = finetune.run_finetune(config, workdir)
  again = finetune.evaluate_finetuned(config, workdir)
  assert again['dev/accuracy'] == results['dev/accuracy']


def test_cli_holds_out_dev_when_the_data_has_train_and_test_only(tmp_path):
  """A train/test directory stops with a hint at dev_fraction; with it, a stratified dev set
  is held out of train, its size and seed logged, and dev metrics reported."""
  data = tmp_path / 'data'
  sentiment_dir(data, rows=60)
  (data / 'dev.tsv').rename(data / 'test.tsv')
  args = ['--config=configs/finetune.py:task=custom,init_from='
          + os.path.join(HF_FIXTURES, 'hf_bert_tiny'), f'--workdir={tmp_path / "run"}',
          f'--config.task.data_dir={data}', '--config.finetune.epochs=0',
          '--config.train.steps=2', '--config.train.batch_size=8',
          '--config.train.eval_batch_size=8', '--config.data.max_seq_len=24',
          '--config.finetune.warmup_fraction=0', '--config.optim.warmup_steps=1']
  refused = run_main(*args)
  assert refused.returncode != 0
  assert 'error: no dev file' in refused.stderr
  assert '--config.task.dev_fraction=0.1' in refused.stderr
  result = run_main(*args, '--config.task.dev_fraction=0.25', '--config.task.train_limit=30')
  assert result.returncode == 0, result.stderr[-2000:]
  records = read_metrics(tmp_path / 'run')
  start = next(r for r in records if r.get('event') == 'start')
  assert (start['dev_split/train'], start['dev_split/dev']) == (45, 15)
  assert start['dev_split/seed'] == 0 and start['train_examples'] == 30
  assert any('dev/accuracy' in r for r in records)
  assert any('test/accuracy' in r for r in records)


def test_bad_init_from_is_a_clear_error(tmp_path):
  task_dir = sentiment_dir(tmp_path / 'data')
  with pytest.raises(FileNotFoundError, match='training workdir'):
    finetune.run_finetune(finetune_cfg(task_dir, str(tmp_path / 'nowhere')),
                          str(tmp_path / 'run'))


EIGHT_DEVICES = r'''
import json, sys
import jax
from tests.test_finetune import finetune_cfg, read_metrics
from research import finetune
assert jax.device_count() == 8
task_dir, out = sys.argv[1], sys.argv[2]
losses = {}
for name, (data, fsdp) in {'dp4_fsdp2': (4, 2)}.items():  # batch and parameters split
  config = finetune_cfg(task_dir, '', mesh__data=data, mesh__fsdp=fsdp, model__dropout=0.0,
                        model__attention_dropout=0.0, data__tokenizer__vocab_size=290)
  finetune.run_finetune(config, f'{out}/{name}')
  losses[name] = [r['train/loss'] for r in read_metrics(f'{out}/{name}') if 'train/loss' in r]
print(json.dumps(losses))
'''


@pytest.mark.slow  # sharding in `make test`: test_train's 8-device step, test_tensor_parallel
def test_finetune_on_8_devices_equals_one_device(tmp_path):
  task_dir = sentiment_dir(tmp_path / 'data')
  config = finetune_cfg(task_dir, '', model__dropout=0.0, model__attention_dropout=0.0,
                        data__tokenizer__vocab_size=290)
  finetune.run_finetune(config, str(tmp_path / 'one'))
  one = [r['train/loss'] for r in read_metrics(tmp_path / 'one') if 'train/loss' in r]
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'PYTHONPATH': str(REPO)}
  result = subprocess.run([sys.executable, '-c', EIGHT_DEVICES, task_dir, str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  for name, losses in json.loads(result.stdout.strip().splitlines()[-1]).items():
    np.testing.assert_allclose(losses, one, rtol=1e-5, err_msg=name)
