"""The training loop end to end: CLI runs, overfitting, exact resume, bad input."""
import functools
import importlib.util
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import optax
import pytest

from configs import gpt as gpt_config
from research import (checkpointing, models, objectives, optim, sharding, state as state_lib,
                      steps, train)
from research.models import presets
from research.models.config import ModelConfig
from tests.conftest import REPO, run_main, tiny_overrides


def read_metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def configure(config, corpus: str, steps_: int) -> ml_collections.ConfigDict:
  """Applies tests.conftest.tiny_overrides to a config object (in-process runs)."""
  config = config.copy_and_resolve_references()
  config.unlock()
  for arg in tiny_overrides(corpus, steps_):
    key, value = arg[len('--config.'):].split('=', 1)
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(value)
  return config.lock()


# One CLI run per family in `make test`; the variants (covered in-process by their objective
# tests) only in `make test-all`.
@pytest.mark.parametrize('config_arg', [
    'configs/bert.py:variant=tiny',
    pytest.param('configs/bert.py:variant=tiny,nsp=0', marks=pytest.mark.slow),
    'configs/gpt.py:variant=tiny',
    pytest.param('configs/gpt.py:variant=tiny,prefix=1', marks=pytest.mark.slow),
    'configs/t5.py:variant=tiny',
    'configs/bart.py:variant=tiny,noise=infilling,permute',
    # UniLM and XLNet train in-process in test_mask_objectives.py::test_every_objective_...
    pytest.param('configs/unilm.py:variant=tiny', marks=pytest.mark.slow),
    pytest.param('configs/xlnet.py:variant=tiny', marks=pytest.mark.slow)])
def test_two_step_cli_run(config_arg, small_corpus, tmp_path):
  workdir = os.path.relpath(tmp_path, REPO)  # a relative --workdir, as the README shows
  result = run_main(f'--config={config_arg}', f'--workdir={workdir}',
                    *tiny_overrides(small_corpus))
  assert result.returncode == 0, result.stderr[-3000:]
  records = read_metrics(tmp_path)
  assert [r['step'] for r in records if 'train/loss' in r] == [1, 2]
  assert any('eval/loss' in r for r in records)
  for name in ('config.json', 'run_info.json', 'tokenizer.model'):
    assert (tmp_path / name).exists(), name
  assert (tmp_path / 'checkpoints' / '2').is_dir()
  assert list((tmp_path / 'tensorboard').iterdir())
  info = json.loads((tmp_path / 'run_info.json').read_text())
  assert 'jax' in json.dumps(info)


def every_config():
  """(file, arg) of every config file and its variants / stages (README, repro recipes)."""
  variants = {'bert': ['variant=tiny', 'variant=mini', 'variant=base', 'nsp=0'],
              'gpt': ['variant=tiny', 'variant=gpt2-124m', 'variant=gpt3-175b', 'prefix=1'],
              'unilm': ['variant=tiny', 'variant=base'], 'xlnet': ['variant=tiny'],
              't5': ['variant=tiny', 'variant=small', 'variant=1.1-base'],
              'bart': ['variant=tiny', 'variant=base', 'noise=masking,rotate'],
              'finetune': ['task=sentiment', 'task=paraphrase', 'task=tagging',
                           'task=modernize']}
  out = [(f'configs/{name}.py', arg) for name, args in variants.items() for arg in args]
  for path in sorted((REPO / 'configs' / 'repro').glob('*.py')):
    if 'def get_config' in path.read_text():  # a recipe (not recipe.py's shared helpers)
      out += [(f'configs/repro/{path.name}', 'stage=pretrain'),
              (f'configs/repro/{path.name}', 'stage=finetune,pretrained=/p')]
  return out


@pytest.mark.parametrize('path,arg', every_config())
def test_every_config_builds_under_eval_shape(path, arg):
  """Each config resolves to a ModelConfig whose model initialises (shapes only), and its
  objective (if it pretrains) trains that arch."""
  spec = importlib.util.spec_from_file_location('config_under_test', REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  model_cfg = ModelConfig.from_config(config.model, vocab_size=config.data.tokenizer.vocab_size)
  if 'task' not in config:
    objectives.from_config(config.objective, model_cfg).check_arch(model_cfg.arch)
  shapes = models.abstract_params(model_cfg)
  assert models.param_count(model_cfg) == sum(x.size for x in jax.tree.leaves(shapes)) > 0


def test_size_override_selects_the_preset():
  """--config.model.size=NAME picks that preset; a field given too still wins over it."""
  config = gpt_config.get_config('variant=tiny').unlock()
  config.model.size = 'gpt2-355m'
  cfg = ModelConfig.from_config(config.model, vocab_size=100)
  assert (cfg.num_layers, cfg.d_model, cfg.num_heads) == (24, 1024, 16)
  config.model.num_layers = 3
  assert ModelConfig.from_config(config.model, vocab_size=100).num_layers == 3


def test_size_override_on_the_command_line(small_corpus, tmp_path):
  result = run_main('--config=configs/gpt.py:variant=tiny', f'--workdir={tmp_path}',
                    *tiny_overrides(small_corpus, steps=1), '--config.model.size=gpt-mini',
                    '--config.model.num_heads=2')
  assert result.returncode == 0, result.stderr[-3000:]
  model = json.loads((tmp_path / 'model.json').read_text())
  assert (model['num_layers'], model['d_model'], model['num_heads']) == (4, 256, 2)


def tiny_setup(objective_name='clm', mesh=None, accum=1, lr=3e-3, tx=None):
  objective = (objectives.CausalLM() if objective_name == 'clm'
               else objectives.MaskedLM(nsp=False, max_predictions=4))
  cfg = ModelConfig(**{**presets.architecture('gpt-tiny' if objective_name == 'clm' else 'bert-tiny'),
                       'vocab_size': 64, 'max_len': 16, 'd_model': 32, 'num_heads': 4,
                       'd_ff': 64, 'dropout': 0.0, 'attention_dropout': 0.0})
  model = models.build(cfg)
  optim_cfg = ml_collections.ConfigDict(dict(
      learning_rate=lr, warmup_steps=0, schedule='constant', end_lr_fraction=1.0,
      weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, clip_norm=0.0))
  tx = tx or optim.make_optimizer(optim_cfg, 100)
  mesh = mesh or sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
  abstract, init = state_lib.sharded_init(
      functools.partial(models.init_params, model, length=16), tx, 0, mesh)
  shardings = state_lib.shardings_of(abstract)
  step = jax.jit(functools.partial(steps.train_step, model=model, objective=objective, tx=tx,
                                   grad_accum_steps=accum),
                 in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, None))
  return init, step, mesh


def mlm_batch(seed=0, batch=8):
  """Rows with uneven numbers of predicted positions (1 to 4): a mean of per-micro-batch
  means would differ from the whole batch's mean."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(7, 64, (batch, 16)).astype(np.int32)
  weights = np.zeros((batch, 16), np.float32)
  for row in range(batch):
    weights[row, rng.choice(16, size=1 + row % 4, replace=False)] = 1.0
  return {'input_ids': ids, 'segment_ids': np.zeros_like(ids),
          'attention_mask': np.ones_like(ids), 'mlm_targets': rng.integers(7, 64, ids.shape),
          'mlm_weights': weights}


def clm_batch(seed=0, batch=8):
  ids = np.random.default_rng(seed).integers(7, 64, (batch, 17)).astype(np.int32)
  return {'input_ids': ids[:, :-1], 'targets': ids[:, 1:],
          'weights': np.ones((batch, 16), np.float32)}


def test_overfits_one_batch():
  init, step, mesh = tiny_setup()
  state, batch = init(), sharding.global_batch(clm_batch(), mesh)
  first = None
  for _ in range(150):
    state, metrics = step(state, batch)
    first = first if first is not None else float(metrics['loss'])
  assert first > 3.5
  assert float(metrics['loss']) < 0.1, float(metrics['loss'])


def test_gradient_accumulation_equals_full_batch():
  # Plain SGD: the update is the gradient itself (Adam's first step would hide differences
  # by normalising each coordinate). MLM weights differ per row (mlm_batch), so averaging
  # per micro-batch instead of normalising by the whole batch's weight would fail.
  init, step1, mesh = tiny_setup('mlm', accum=1, tx=optax.sgd(1.0))
  _, step4, _ = tiny_setup('mlm', accum=4, tx=optax.sgd(1.0))
  batch = sharding.global_batch(mlm_batch(), mesh)
  a, ma = step1(init(), batch)
  b, mb = step4(init(), batch)
  np.testing.assert_allclose(float(ma['loss']), float(mb['loss']), rtol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), a.params, b.params)


def test_resume_equals_uninterrupted(small_corpus, tmp_path, monkeypatch):
  config = configure(gpt_config.get_config('variant=tiny'), small_corpus, 6)
  with config.unlocked():
    config.checkpoint.every = 3
  full = train.train_and_evaluate(config, str(tmp_path / 'full'))

  # Crash right after the step-3 checkpoint is written, then run the same command again.
  class Crash(Exception):
    pass
  original = checkpointing.Checkpointer.save

  def save_then_crash(self, step, state, data_state):
    original(self, step, state, data_state)
    if step == 3:
      self.wait()
      raise Crash
  monkeypatch.setattr(checkpointing.Checkpointer, 'save', save_then_crash)
  with pytest.raises(Crash):
    train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  monkeypatch.setattr(checkpointing.Checkpointer, 'save', original)
  resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))

  assert resumed == full  # final eval metrics, bit for bit
  losses = lambda d: {r['step']: r['train/loss'] for r in read_metrics(d) if 'train/loss' in r}
  assert losses(tmp_path / 'resumed') == losses(tmp_path / 'full')
  assert any(r.get('event') == 'resumed' for r in read_metrics(tmp_path / 'resumed'))


EIGHT_DEVICES = r'''
import functools, jax, numpy as np, ml_collections, optax
from jax.sharding import Mesh
from tests.test_train import tiny_setup, clm_batch
from research import sharding
assert jax.device_count() == 8
results = {}
for name, shape in (('one', (1, 1)), ('dp8', (8, 1)), ('dp4_fsdp2', (4, 2))):
  devices = np.array(jax.devices()[:shape[0] * shape[1]]).reshape(shape)
  mesh = Mesh(devices, ('data', 'fsdp'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  # SGD: Adam would turn gradients that are exactly zero in theory (the key bias) but
  # reduction-order noise in practice into +-lr updates.
  init, step, _ = tiny_setup(mesh=mesh, tx=optax.sgd(0.5))
  state, metrics = step(init(), sharding.global_batch(clm_batch(), mesh))
  results[name] = (float(metrics['loss']), jax.device_get(state.params), state)
ref_loss, ref_params, _ = results['one']
for name in ('dp8', 'dp4_fsdp2'):
  loss, params, state = results[name]
  assert abs(loss - ref_loss) < 1e-6, (name, loss, ref_loss)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6), params, ref_params)
emb = results['dp4_fsdp2'][2].params['embeddings']['token']['embedding']
assert len(emb.sharding.device_set) == 8 and emb.addressable_shards[0].data.shape == (64, 16), emb.sharding
print('OK')
'''


def test_one_step_on_8_devices_equals_one_device():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'PYTHONPATH': str(REPO)}
  result = subprocess.run([sys.executable, '-c', EIGHT_DEVICES], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and 'OK' in result.stdout, result.stderr[-3000:]


def assert_one_line_error(result, *fragments):
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]


def test_missing_corpus_is_one_line_error(tmp_path):
  result = run_main('--config=configs/gpt.py', f'--workdir={tmp_path}',
                    f'--config.data.corpus={tmp_path}/nope.txt')
  assert_one_line_error(result, 'nope.txt')


def test_empty_corpus_is_one_line_error(tmp_path):
  (tmp_path / 'empty.txt').write_text('\n\n')
  result = run_main('--config=configs/gpt.py', f'--workdir={tmp_path}/w',
                    f'--config.data.corpus={tmp_path}/empty.txt')
  assert_one_line_error(result, 'empty')


def test_unknown_config_key_fails(tmp_path):
  result = run_main('--config=configs/gpt.py', f'--workdir={tmp_path}', '--config.train.stpes=5')
  assert result.returncode != 0
  assert 'stpes' in result.stderr


@pytest.mark.parametrize('args,fragments', [
    (('--config=configs/gpt.py', '--config.train.stpes=5'), ('unknown config key', 'steps')),
    (('--config=configs/gpt.py:varaint=tiny',), ('unknown config argument', 'variant')),
    (('--config=configs/gpt.py', '--config.train.steps=many'), ('train.steps', 'many')),
    (('--config=configs/nowhere.py',), ('--config', 'nowhere.py')),
])
def test_bad_config_flags_are_one_line_errors(tmp_path, args, fragments):
  result = run_main(*args, f'--workdir={tmp_path}')
  assert_one_line_error(result, *fragments)
  assert not any(tmp_path.iterdir())  # nothing written


def test_sequence_longer_than_positions_is_one_line_error(small_corpus, tmp_path):
  result = run_main('--config=configs/gpt.py', f'--workdir={tmp_path}',
                    *tiny_overrides(small_corpus), '--config.model.max_len=16')
  assert_one_line_error(result, 'exceeds', 'max_len')


def test_checkpoint_of_another_shape_is_one_line_error_and_kept(small_corpus, tmp_path):
  args = ['--config=configs/gpt.py', f'--workdir={tmp_path}', *tiny_overrides(small_corpus)]
  assert run_main(*args).returncode == 0
  before = sorted(str(p) for p in (tmp_path / 'checkpoints').rglob('*'))
  result = run_main(*args, '--config.model.d_model=64', '--config.model.d_ff=128')
  assert_one_line_error(result, 'fresh --workdir')
  assert sorted(str(p) for p in (tmp_path / 'checkpoints').rglob('*')) == before


def test_two_processes_form_one_mesh_and_match_one_process(small_corpus, tmp_path):
  """Multi-host code path: 2 processes x 2 CPU devices (gloo) = one 4-device mesh.

  Each process loads rows i::2 of the global batch, so rows sit in another order on the mesh
  than in a one-process run; without dropout the step is the same computation."""
  args = ['--config=configs/gpt.py:variant=tiny', *tiny_overrides(small_corpus, steps=3),
          '--config.model.dropout=0', '--config.model.attention_dropout=0']
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  port = 20000 + os.getpid() % 20000
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'research.main', *args, f'--workdir={tmp_path}/multi',
       f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  single = run_main(*args, f'--workdir={tmp_path}/single',
                    env={'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert single.returncode == 0, single.stderr[-3000:]
  final = lambda text: dict(kv.split('=') for kv in text.strip().splitlines()[-1].split())
  multi0, multi1, one = final(outputs[0][0]), final(outputs[1][0]), final(single.stdout)
  assert multi0 == multi1
  assert multi0.keys() == one.keys()
  for key in one:
    assert float(multi0[key]) == pytest.approx(float(one[key]), rel=1e-4), key


@pytest.mark.parametrize('args,fragments', [
    (('--config=configs/bart.py:variant=tiny,noise=infilling,shuffle',),
     ('unknown BART noise', 'shuffle', 'permute')),
    (('--config=configs/t5.py:variant=tiny', '--config.data.max_seq_len=600'),
     ('600', 'configured maximum of 512', 'max_len')),
    (('--config=configs/t5.py:variant=tiny', '--config.objective.name=clm'),
     ("objective 'clm'", 'decoder', 'encoder_decoder')),
    (('--config=configs/finetune.py:task=modernize', '--config.task.source_column=old'),
     ("no column 'old'", 'source')),
])
def test_seq2seq_bad_input_is_one_line_error(small_corpus, tmp_path, args, fragments):
  result = run_main(*args, f'--workdir={tmp_path}/w', f'--config.data.corpus={small_corpus}')
  assert_one_line_error(result, *fragments)


def test_decoder_workdir_given_a_seq2seq_config_is_one_line_error(small_corpus, tmp_path):
  assert run_main('--config=configs/gpt.py:variant=tiny', f'--workdir={tmp_path}',
                  *tiny_overrides(small_corpus, steps=1)).returncode == 0
  before = sorted(str(p) for p in (tmp_path / 'checkpoints').rglob('*'))
  result = run_main('--config=configs/t5.py:variant=tiny', f'--workdir={tmp_path}',
                    *tiny_overrides(small_corpus, steps=1))
  assert_one_line_error(result, "arch='decoder'", "'encoder_decoder'", 'fresh --workdir')
  assert sorted(str(p) for p in (tmp_path / 'checkpoints').rglob('*')) == before
