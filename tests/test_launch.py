"""Sweeps (expansion, names, skipping finished runs, SLURM script), the collector and the
Table 5 recipe's configs (built, not run)."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from configs import base as cfg_base
from configs.repro import bert_table5
from launch import collect, hyper, outcome, repro, sweep
from tests.conftest import REPO

SWEEP_CONFIG = '''
from configs import finetune
from launch import hyper

def get_config(arg=''):
  return finetune.get_config(arg)

def get_sweep(arg=''):
  return hyper.product(hyper.sweep('arg.task', ['sentiment', 'paraphrase']),
                       hyper.zipped(hyper.sweep('config.optim.learning_rate', [1e-4, 3e-5]),
                                    hyper.sweep('config.train.batch_size', [16, 32])),
                       [{'config.finetune.init_from': '{root}/pre/objective=mlm'}])
'''


def test_hyper_product_zip_and_random():
  grid = hyper.product(hyper.sweep('a', [1, 2]), hyper.sweep('b', ['x', 'y', 'z']))
  assert len(grid) == 6 and grid[1] == {'a': 1, 'b': 'y'}
  assert hyper.zipped(hyper.sweep('a', [1, 2]), hyper.sweep('b', [3, 4])) == [
      {'a': 1, 'b': 3}, {'a': 2, 'b': 4}]
  with pytest.raises(ValueError, match='length'):
    hyper.zipped(hyper.sweep('a', [1]), hyper.sweep('b', [3, 4]))
  runs = hyper.random_search(5, seed=3, **{'config.optim.learning_rate':
                                           hyper.log_uniform(1e-5, 1e-3),
                                           'config.train.batch_size': hyper.choice(16, 32)})
  assert runs == hyper.random_search(5, seed=3, **{'config.optim.learning_rate':
                                                   hyper.log_uniform(1e-5, 1e-3),
                                                   'config.train.batch_size': hyper.choice(16, 32)})
  assert all(1e-5 <= r['config.optim.learning_rate'] <= 1e-3 for r in runs)


def test_expansion_names_and_commands(tmp_path):
  config_file = tmp_path / 'my_sweep.py'
  config_file.write_text(SWEEP_CONFIG)
  config = f'{config_file}:variant=tiny'
  specs = sweep.expand(config, str(tmp_path / 'root'), sweep.load_sweep(config))
  assert [s.name for s in specs] == [
      'task=sentiment,learning_rate=0.0001,batch_size=16',
      'task=sentiment,learning_rate=3e-05,batch_size=32',
      'task=paraphrase,learning_rate=0.0001,batch_size=16',
      'task=paraphrase,learning_rate=3e-05,batch_size=32']
  command = specs[3].command('python')
  assert command[:3] == ['python', '-m', 'research.main']
  assert f'--config={config_file}:variant=tiny,task=paraphrase' in command
  assert f'--workdir={tmp_path}/root/{specs[3].name}' in command
  assert '--config.optim.learning_rate=3e-05' in command
  assert f'--config.finetune.init_from={tmp_path}/root/pre/objective=mlm' in command  # {root}
  assert sweep.run_names([{'a.x': 1, 'b.x': 2}, {'a.x': 1, 'b.x': 3}]) == ['x=2', 'x=3']
  assert sweep.run_names([{'config.train.seed': 1, 'config.data.seed': 2},
                          {'config.train.seed': 3, 'config.data.seed': 4}]) == [
                              'train.seed=1,data.seed=2', 'train.seed=3,data.seed=4']
  assert sweep.run_names([{'config.p': '/a/b/ckpt_1/'}, {'config.p': '/a/b/ckpt_2'}]) == [
      'p=ckpt_1', 'p=ckpt_2']
  with pytest.raises(ValueError, match='more than once'):
    sweep.run_names([{'config.x': 1, 'config.y': '/a/z'}, {'config.x': 1, 'config.y': '/b/z'}])
  with pytest.raises(ValueError, match='must start with'):
    sweep.expand(config, str(tmp_path), [{'train.steps': 1}, {'train.steps': 2}])


def fake_run(workdir, steps, saved):
  os.makedirs(os.path.join(workdir, 'checkpoints'), exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    json.dump({'train': {'steps': steps}}, f)
  for step in saved:
    os.makedirs(os.path.join(workdir, 'checkpoints', str(step)))


def test_finished_runs_are_skipped_on_rerun(tmp_path):
  fake_run(tmp_path / 'done', 100, [50, 100])
  fake_run(tmp_path / 'half', 100, [50])
  os.makedirs(tmp_path / 'half' / 'checkpoints' / '100.orbax-checkpoint-tmp-123')  # in flight
  assert outcome.is_finished(str(tmp_path / 'done'))
  assert not outcome.is_finished(str(tmp_path / 'half'))
  assert not outcome.is_finished(str(tmp_path / 'never'))

  config_file = tmp_path / 'my_sweep.py'
  config_file.write_text(SWEEP_CONFIG)
  root = tmp_path / 'root'
  config = f'{config_file}:variant=tiny'
  specs = sweep.expand(config, str(root), sweep.load_sweep(config))
  fake_run(specs[0].workdir, 10, [10])
  result = subprocess.run([sys.executable, '-m', 'launch.sweep', f'--config={config}',
                           f'--root={root}', '--dry_run'], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert '4 runs' in result.stdout and '1 finished, 3 to run' in result.stdout
  assert specs[0].name not in result.stdout.split('to run', 1)[1]
  assert specs[1].name in result.stdout


def test_local_runs_and_exit_status(tmp_path, monkeypatch):
  specs = [sweep.RunSpec(f'r{i}', str(tmp_path / f'r{i}'), 'x.py', ()) for i in range(3)]
  monkeypatch.setattr(sweep.RunSpec, 'command', lambda self, python=sys.executable: [
      python, '-c', 'import os, sys; print("hello {}", os.environ["JAX_COMPILATION_CACHE_DIR"]);'
      f' sys.exit({self.name == "r1"})'.format(self.name)])
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  status = sweep.run_local(specs, parallel=2)
  assert status == {'r0': 0, 'r1': 1, 'r2': 0}
  # The runs share one compilation cache under the sweep root.
  assert f'hello r2 {tmp_path}/.jax_cache' in (tmp_path / 'r2' / 'log.txt').read_text()


# A local sweep of runs that, like research.main, save and exit 143 on SIGTERM.
_STOPPABLE_SWEEP = """
import os, sys
from launch import sweep
CHILD = ('import os, signal, sys, time\\n'
         'def save(signum, frame):\\n'
         '  open("saved", "w").close(); sys.exit(128 + signum)\\n'
         'signal.signal(signal.SIGTERM, save)\\n'
         'open("ready", "w").close(); time.sleep(120)')
class Run(sweep.RunSpec):
  def command(self, python=sys.executable):
    return [python, '-c', f'import os; os.chdir({self.workdir!r}); exec({CHILD!r})']
root = sys.argv[1]
try:
  sweep.run_local([Run(f'r{i}', os.path.join(root, f'r{i}'), 'x.py', ()) for i in range(3)], 2)
except sweep.Stopped as stopped:
  sys.exit(f'[sweep] {stopped}')
"""


def test_local_sweep_stopped_by_sigterm_lets_its_runs_save_and_starts_no_more(tmp_path):
  parent = subprocess.Popen([sys.executable, '-c', _STOPPABLE_SWEEP, str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, cleaned up below
  try:
    deadline = time.time() + 60
    while not all((tmp_path / r / 'ready').exists() for r in ('r0', 'r1')):
      assert time.time() < deadline and parent.poll() is None, parent.communicate()
      time.sleep(0.1)
    parent.send_signal(signal.SIGTERM)  # to the sweep only, as `kill PID` does
    out, err = parent.communicate(timeout=30)
  finally:
    try:
      os.killpg(parent.pid, signal.SIGKILL)  # whatever is left of a failed run
    except ProcessLookupError:
      pass
  assert parent.returncode == 1 and 'stopped by SIGTERM; the same command resumes' in err
  assert (tmp_path / 'r0' / 'saved').exists() and (tmp_path / 'r1' / 'saved').exists()
  assert 'stopped r0' in out and 'stopped r1' in out
  assert not (tmp_path / 'r2').exists()  # the pending run never started


def test_slurm_script(tmp_path):
  specs = [sweep.RunSpec('task=a,seed=0', str(tmp_path / 'task=a,seed=0'), 'c.py:v=1',
                         (('train.seed', 0),)),
           sweep.RunSpec('task=b,seed=1', str(tmp_path / 'task=b,seed=1'), 'c.py:v=1',
                         (('train.seed', 1),))]
  script = sweep.slurm_script(specs, str(tmp_path), nodes=2, gpus_per_node=8, max_parallel=1,
                              partition='gpu', python='python')
  assert script.startswith('#!/bin/bash\n')
  for line in ('#SBATCH --array=0-1%1', '#SBATCH --nodes=2', '#SBATCH --ntasks-per-node=1',
               '#SBATCH --gpus-per-node=8', '#SBATCH --partition=gpu', '#SBATCH --requeue'):
    assert line in script, line
  assert 'srun python "${ARGS[@]}" &' in script
  assert '#SBATCH --signal=B:TERM@300' in script
  assert 'scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' in script
  assert f'  1) ARGS=(-m research.main --config=c.py:v=1 --workdir={tmp_path}/task=b,seed=1' in script
  assert '--config.train.seed=1) ;;  # task=b,seed=1' in script
  result = subprocess.run(['bash', '-n'], input=script, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


# Stands in for srun: exits with $FAKE_EXIT at once if set, else runs until SIGTERM and then
# exits with 143, as research.main does after saving its checkpoint.
FAKE_SRUN = """#!/bin/bash
if [ -n "${FAKE_EXIT:-}" ]; then exit "$FAKE_EXIT"; fi
trap 'echo SIGTERM >> "$FAKE_LOG"; exit 143' TERM
echo started >> "$FAKE_LOG"
for i in $(seq 600); do sleep 0.05; done
"""
FAKE_SCONTROL = '#!/bin/bash\necho "scontrol $*" >> "$FAKE_LOG"\n'


@pytest.mark.parametrize('case,fake_exit,restarts,requeued,status', [
    ('SIGTERM to the script', '', '', True, 0),  # --signal=B:TERM before the time limit
    ('run preempted directly', '143', '5', True, 0),  # SLURM signalled the run itself
    ('run finished', '0', '', False, 0),
    ('bad input', '2', '', False, 2),
    ('lost process', '75', '', True, 0),  # research/multihost.py
    ('JAX abort on a lost coordinator', '134', '2', True, 0),
    ('lost process again and again', '75', '3', False, 75),  # --slurm_failure_restarts=3
])
def test_slurm_script_requeues_a_run_stopped_by_sigterm(tmp_path, case, fake_exit, restarts,
                                                       requeued, status):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name, text in (('srun', FAKE_SRUN), ('scontrol', FAKE_SCONTROL)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  script = tmp_path / 'job.sbatch'
  script.write_text(sweep.slurm_script(
      [sweep.RunSpec('r0', str(tmp_path / 'r0'), 'c.py', ())], str(tmp_path), python='python'))
  log = tmp_path / 'log'
  log.touch()
  job = subprocess.Popen(['bash', str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env={**os.environ, 'PATH': f'{bin_dir}:{os.environ["PATH"]}',
                                         'SLURM_ARRAY_JOB_ID': '77', 'SLURM_ARRAY_TASK_ID': '0',
                                         'FAKE_LOG': str(log), 'FAKE_EXIT': fake_exit,
                                         'SLURM_RESTART_COUNT': restarts})
  if not fake_exit:
    while 'started' not in log.read_text():
      assert job.poll() is None, job.stdout.read()
      time.sleep(0.01)
    job.send_signal(signal.SIGTERM)
  output, _ = job.communicate(timeout=60)
  assert job.returncode == status, output
  events = log.read_text().split('\n')
  assert ('scontrol requeue 77_0' in events) == requeued, (events, output)
  if not fake_exit:
    assert 'SIGTERM' in events and 'stopping the run at a checkpoint' in output


def write_run(root, name, records, saved=(10,)):
  """A run of 10 steps that logged `records` and saved checkpoints `saved` (10: finished)."""
  fake_run(root / name, 10, saved)
  (root / name / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))


def test_collector_table_and_plot(tmp_path):
  for seed, (a, b) in enumerate([(0.80, 0.60), (0.84, 0.62), (0.82, 0.64)]):
    write_run(tmp_path, f'task=sentiment,setting=mlm,seed={seed}',
              [{'step': 0, 'event': 'start'}, {'step': 5, 'dev/accuracy': 0.5},
               {'step': 10, 'dev/accuracy': a}])
    write_run(tmp_path, f'task=paraphrase,setting=mlm,seed={seed}',
              [{'step': 10, 'dev/f1': b}])
  write_run(tmp_path, 'objective=mlm', [{'step': 10, 'eval/loss': 3.0}])  # no task: skipped
  table = collect.aggregate(collect.load_runs(str(tmp_path)), ['setting'], 'task',
                            ['dev/accuracy', 'dev/f1'], scale=100)
  cell = table[('mlm',)]['sentiment']
  assert cell.mean == pytest.approx(82.0) and cell.std == pytest.approx(2.0)
  text = collect.markdown(table, ['setting'])
  assert text.splitlines()[0] == '| setting | paraphrase | sentiment |'
  assert '| mlm | 62.0 ± 2.0 (3) | 82.0 ± 2.0 (3) |' in text
  collect.plot(table, str(tmp_path / 'plot.png'), ylabel='acc')
  assert (tmp_path / 'plot.png').read_bytes()[:4] == b'\x89PNG'


def test_table5_recipe_configs_and_sweeps(tmp_path):
  pre = bert_table5.get_sweep('variant=tiny,stage=pretrain')
  assert [r['arg.objective'] for r in pre] == ['mlm_nsp', 'mlm', 'clm']
  configs = [bert_table5.get_config(f'stage=pretrain,objective={o}') for o in ('mlm_nsp', 'clm')]
  # Equal compute: only the objective differs, and the arch it trains (the same BERT
  # stack, read with a causal mask).
  assert configs[0].objective.name == 'mlm_nsp' and configs[1].objective.name == 'clm'
  assert (configs[0].model.arch, configs[1].model.arch) == ('encoder', 'decoder')
  for key in ('model', 'train', 'data', 'optim'):
    a, b = configs[0][key].to_dict(), configs[1][key].to_dict()
    a.pop('arch', None), b.pop('arch', None)
    assert a == b, key
  runs = bert_table5.get_sweep('variant=tiny,stage=finetune')
  assert len(runs) == 3 * 5 * 3
  specs = sweep.expand('configs/repro/bert_table5.py:variant=tiny,stage=finetune',
                       str(tmp_path), runs)
  assert specs[0].name == 'task=sentiment,setting=mlm_nsp,seed=0'
  by_setting = {}
  for setting in bert_table5.SETTINGS:
    c = bert_table5.get_config(f'stage=finetune,task=paraphrase,setting={setting},'
                               f'pretrained={tmp_path}')
    by_setting[setting] = c
  assert by_setting['ltr'].finetune.init_from == f'{tmp_path}/objective=clm'
  assert by_setting['ltr_bilstm'].finetune.bilstm_size > 0
  assert by_setting['ltr'].finetune.bilstm_size == 0
  assert by_setting['scratch'].finetune.init_from == ''
  assert by_setting['scratch'].data.tokenizer.path.endswith('objective=mlm_nsp/tokenizer.model')
  assert len({c.train.steps for c in by_setting.values()}) == 1
  assert os.path.exists(by_setting['mlm'].task.dev) and not by_setting['mlm'].task.test
  base = bert_table5.get_config('variant=base,stage=pretrain')
  assert cfg_base.model_field(base, 'num_layers') == 12 and base.train.batch_size == 256
  with pytest.raises(ValueError, match='pretrained'):
    bert_table5.get_config('stage=finetune')


def test_repro_comparison_table():
  table = {('mlm_nsp',): {'sentiment': collect.Cell([70.0, 72.0])}}
  text = repro.comparison(bert_table5, table)
  assert '| mlm_nsp | BERT_BASE (MLM+NSP) | 71.0 ± 1.4 (2) | 84.4 | 88.4 | 86.7 | 92.7 | 88.5 |' \
      in text
  assert '| ltr_bilstm | + BiLSTM |  | 82.1 | 84.1 | 75.7 | 91.6 | 84.9 |' in text


def test_repro_wall_time_adds_up_over_resumed_invocations(tmp_path):
  assert repro.record_wall_time(str(tmp_path), 60.0) == (60.0, 1)
  assert repro.record_wall_time(str(tmp_path), 30.5) == (90.5, 2)


def test_repro_interrupted_still_counts_its_wall_time(tmp_path, monkeypatch):
  def interrupted(specs, parallel):
    raise sweep.Stopped(signal.SIGINT)
  monkeypatch.setattr(sweep, 'run_local', interrupted)
  with pytest.raises(SystemExit,
                     match='stopped by SIGINT; the same command resumes .* over 1 invocation'):
    repro.main(['--config=configs/repro/bart_table1.py:variant=tiny', f'--root={tmp_path}'])
  assert repro.record_wall_time(str(tmp_path), None)[1] == 1


def test_repro_tabulate_only_runs_nothing_and_says_the_table_is_partial(tmp_path):
  repro.main(['--config=configs/repro/bart_table1.py:variant=tiny', f'--root={tmp_path}',
              '--tabulate_only'])
  text = (tmp_path / 'table.md').read_text()
  assert 'Partial: finished so far 0 of 10 pretrain runs, 0 of 99 finetune runs' in text
  assert not list(tmp_path.glob('objective=*')) and not (tmp_path / 'wall_time.json').exists()


def test_repro_pretraining_rows_end_with_the_unigram_model(tmp_path):
  """`where masked` reads MLM's and span corruption's accuracy on the hidden targets."""
  start = {'step': 0, 'event': 'start', 'baseline/unigram_cross_entropy': 6.3307,
           'baseline/most_frequent_token_accuracy': 0.0581, 'baseline/unigram_perplexity': 561.54}
  runs = {'objective=lm': {'eval/loss': 4.814, 'eval/accuracy': 0.1612, 'eval/perplexity': 123.3},
          'objective=mlm': {'eval/loss': 5.968, 'eval/mlm_accuracy': 0.118,
                            'eval/mlm_masked_accuracy': 0.0562},
          'objective=t5': {'eval/loss': 5.092, 'eval/accuracy': 0.2932,
                           'eval/span_accuracy': 0.0571, 'eval/perplexity': 162.7}}
  for name, final in runs.items():
    (tmp_path / name).mkdir()
    records = [start, {'step': 1200, **final}]
    (tmp_path / name / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n'
                                                           for r in records))
  assert repro.pretraining_rows(str(tmp_path)).splitlines()[2:] == [
      '| objective=lm | 1200 | 4.814 | 0.161 |  | 123.3 |',
      '| objective=mlm | 1200 | 5.968 | 0.118 | 0.056 |  |',
      '| objective=t5 | 1200 | 5.092 | 0.293 | 0.057 | 162.7 |',
      '| unigram model (most frequent token) | | 6.331 | 0.058 | 0.058 | 561.5 |']


def test_repro_tabulates_every_metric_beside_its_baseline():
  """Modernize has two columns (perplexity, chrF); the copy baseline sits in the chrF one,
  read from a run's start event; accuracies are scaled to percent."""
  from configs.repro import bart_table1
  start = lambda **kw: {'step': 0, 'event': 'start', **kw}
  done = outcome.Outcome(outcome.FINISHED)
  runs = [collect.Run('task=modernize,setting=lm,seed=0', {'task': 'modernize', 'setting': 'lm'},
                      [start(**{'baseline/chrf': 65.8}), {'step': 9, 'dev/chrf': 40.0,
                                                          'dev/perplexity': 9.5}], done),
          collect.Run('task=sentiment,setting=lm,seed=0', {'task': 'sentiment', 'setting': 'lm'},
                      [start(**{'baseline/accuracy': 0.6}), {'step': 9, 'dev/accuracy': 0.7}],
                      done)]
  table = repro.tabulate(bart_table1, runs)
  assert table[('lm',)]['modernize chrf'].mean == 40.0
  assert table[('lm',)]['modernize perplexity'].mean == 9.5
  assert table[('lm',)]['sentiment'].mean == pytest.approx(70.0)
  assert table[('copy the source',)]['modernize chrf'].mean == 65.8
  assert table[('majority class',)]['sentiment'].mean == pytest.approx(60.0)
  assert repro.row_order(bart_table1)[-2:] == [('majority class',), ('copy the source',)]


@pytest.mark.parametrize('recipe_name', ['bart_table1', 't5_table2'])
def test_objective_table_recipes(recipe_name):
  """Every arm builds; equal compute per arm (steps x batch x encoder length; fine-tuning
  verse pairs of 128 tokens whether one stack or two read them); the sweep is arms x tasks x
  3 seeds; T5's P / 2P / M/2 parameter accounting holds."""
  import importlib
  from configs import base as base_cfg
  from research import models
  from research.models.config import ModelConfig
  recipe = importlib.import_module(f'configs.repro.{recipe_name}')
  arms = [r['arg.objective'] for r in recipe.get_sweep('stage=pretrain')]
  assert arms == list(recipe.ARMS)
  configs = {a: recipe.get_config(f'stage=pretrain,objective={a}') for a in arms}
  budgets = {(c.train.steps, c.train.batch_size, c.data.max_seq_len) for c in configs.values()}
  assert len(budgets) == 1, budgets
  # Parameters of the layer stacks (the papers' P), without the 8000 x d token table.
  params = {a: models.param_count(ModelConfig.from_config(c.model, vocab_size=8000))
            - 8000 * base_cfg.model_field(c, 'd_model') for a, c in configs.items()}
  finetunes = recipe.get_sweep('stage=finetune')
  assert len(finetunes) == len(recipe.TASKS) * len(recipe.SETTINGS) * 3
  tokens_per_verse_pair = set()
  for run in [r for r in finetunes if r['config.train.seed'] == 0]:
    c = recipe.get_config(f"stage=finetune,task={run['arg.task']},setting={run['arg.setting']},"
                          'pretrained=/p')
    if run['arg.task'] == 'modernize':  # equal tokens per verse pair in every arm
      setting = run['arg.setting']
      arch = (recipe.ARCHS[recipe.arch_name(setting)][0] if recipe_name == 't5_table2'
              else recipe.ARMS.get(setting, recipe.ARMS['text_infilling'])[1])
      source_and_target = c.data.max_seq_len + (
          c.task.max_target_len if arch == 'encoder_decoder' else 0)
      tokens_per_verse_pair.add(source_and_target)
  assert tokens_per_verse_pair == {128}
  if recipe_name == 't5_table2':
    ratio = lambda arm: params[arm] / params['lm-denoising']
    assert 1.8 < ratio('enc_dec-denoising') < 2.6  # 2P (+ the decoder's cross-attention)
    assert 0.9 < ratio('enc_dec_half-lm') < 1.4 and 0.9 < ratio('enc_dec_shared-lm') < 1.5
    assert configs['prefix_lm-denoising'].objective.bidirectional_inputs
    assert configs['lm-lm'].objective.name == 'clm'
    assert configs['enc_dec-lm'].objective.name == 'prefix_lm'
    scratch = recipe.get_config('stage=finetune,setting=scratch,pretrained=/p')
    assert not scratch.finetune.init_from and scratch.model.arch == 'encoder_decoder'
    assert scratch.data.tokenizer.path == '/p/tokenizer.model'
  else:
    sizes = sorted(params.values())
    assert sizes[-1] < 1.6 * sizes[0]  # comparable sizes, as BART Sec 4.1
    assert configs['permuted_lm'].model.two_stream
    assert configs['text_infilling'].objective.noises == 'infilling'


# --- Failed runs: the others finish, the failures are listed with their error lines, a rerun
# retries only them; a kill mid-write never leaves a half file a collector reads as finished.

_FAILING_SWEEP = '''
from launch import hyper

def get_sweep(arg=''):
  return hyper.product(hyper.sweep('arg.task', ['a', 'b']), hyper.sweep('config.train.seed', [0, 1]))
'''

# A stand-in for research.main, run in its workdir: `task=a,seed=1` fails as a bad
# hyperparameter does, `task=b,seed=0` as a run whose loss stopped being finite, `task=b,seed=1`
# is SIGKILLed; each succeeds once `fixed` exists in the sweep root. A finished run writes what
# research.main leaves behind (config.json, metrics.jsonl, its final checkpoint).
_FAKE_RUN = '''
import json, os, signal, sys
name = os.path.basename(os.getcwd())
open('../attempts', 'a').write(name + '\\n')
if not os.path.exists('../fixed'):
  if name == 'task=a,seed=1':
    print('some output'); print('error: --config.optim.learning_rate=-1: must be > 0', file=sys.stderr)
    sys.exit(2)
  if name == 'task=b,seed=0':
    print('error: training stopped at step 7: the loss or gradient norm was not finite for 5 '
          'steps in a row', file=sys.stderr)
    sys.exit(2)
  if name == 'task=b,seed=1':
    os.kill(os.getpid(), signal.SIGKILL)
json.dump({'train': {'steps': 10}}, open('config.json', 'w'))
open('metrics.jsonl', 'a').write(json.dumps({'step': 10, 'dev/accuracy': 0.5 + 0.1 * len(name)}) + '\\n')
os.makedirs('checkpoints/10')
'''


def test_sweep_with_failing_runs_finishes_the_others_lists_them_and_retries_only_them(
    tmp_path, monkeypatch, capsys):
  config = tmp_path / 'failing.py'
  config.write_text(_FAILING_SWEEP)
  root = tmp_path / 'root'
  monkeypatch.setattr(sweep.RunSpec, 'command', lambda self, python=sys.executable: [
      python, '-c', f'import os; os.chdir({self.workdir!r}); exec({_FAKE_RUN!r})'])
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'cache'))
  args = [f'--config={config}', f'--root={root}', '--local', '--parallel=2']
  with pytest.raises(SystemExit) as exit_info:
    sweep.main(args)
  assert exit_info.value.code == 1
  out = capsys.readouterr().out
  assert '4 runs in' in out and '0 finished, 4 to run' in out
  assert '[sweep] 3 of 4 runs failed, 0 unfinished' in out
  assert ('| task=a,seed=1 | failed | 2 | error: --config.optim.learning_rate=-1: must be > 0 |'
          in out)
  assert '| task=b,seed=0 | failed | 2 | error: training stopped at step 7' in out
  assert '| task=b,seed=1 | failed | -9 | killed by SIGKILL |' in out
  assert outcome.is_finished(str(root / 'task=a,seed=0'))

  with pytest.raises(SystemExit) as exit_info:
    collect.main([f'--root={root}', '--rows=seed', '--cols=task', '--metric=dev/accuracy',
                  f'--out={tmp_path / "table.md"}'])
  assert exit_info.value.code == 1
  table = (tmp_path / 'table.md').read_text()
  assert table.startswith('| seed | a |\n|---|---:|\n| 0 | ') and '| 1 |' not in table
  assert '| task=b,seed=1 | failed | -9 | killed by SIGKILL |' in table
  assert "| task=a,seed=1 | failed | 2 | error: --config.optim.learning_rate=-1" in table

  (root / 'fixed').touch()
  sweep.main(args)  # exits 0: every run finished
  out = capsys.readouterr().out
  assert '1 finished, 3 to run (3 failed before, 0 unfinished)' in out
  attempts = (root / 'attempts').read_text().split()
  assert sorted(attempts[4:]) == ['task=a,seed=1', 'task=b,seed=0', 'task=b,seed=1']
  collect.main([f'--root={root}', '--rows=seed', '--cols=task', '--metric=dev/accuracy'])
  assert 'Not in the table' not in capsys.readouterr().out


_WRITER = '''
import itertools, sys
from research import atomic_file
for i in itertools.count():
  atomic_file.write_text(sys.argv[1], f'| table {i} |\\n' + 'x' * 3_000_000 + '\\nend\\n')
'''


def test_a_kill_during_a_write_leaves_the_old_file_or_the_new_one(tmp_path):
  """table.md and predictions are written whole (research/atomic_file.py): SIGKILLed at
  random moments while rewriting a 3 MB file, the writer leaves a complete version each time."""
  path = tmp_path / 'table.md'
  rng = random.Random(0)
  for _ in range(8):
    writer = subprocess.Popen([sys.executable, '-c', _WRITER, str(path)], cwd=REPO)
    while not path.exists():
      time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.2))
    writer.kill()
    writer.wait()
    text = path.read_text()
    assert text.startswith('| table ') and text.endswith('\nend\n'), len(text)


def test_half_written_metrics_line_is_skipped_and_the_run_is_not_finished(tmp_path):
  """A kill while a record was appended leaves a partial last line in metrics.jsonl: the
  collector skips it and, without the final checkpoint, lists the run as unfinished, whatever
  its dev metrics; the resumed run's Reporter cuts the partial record before appending."""
  from research import reporting
  records = [{'step': 0, 'event': 'start'}, {'step': 10, 'dev/accuracy': 0.9}]
  write_run(tmp_path, 'task=a,seed=0', records, saved=(5,))
  write_run(tmp_path, 'task=a,seed=1', records, saved=(5, 10))
  metrics = tmp_path / 'task=a,seed=0' / 'metrics.jsonl'
  with open(metrics, 'a') as f:
    f.write('{"step": 11, "dev/acc')  # killed mid-record
  runs = collect.load_runs(str(tmp_path))
  assert runs[0].records == records and runs[0].outcome.state == outcome.UNFINISHED
  table = collect.aggregate(runs, ['seed'], 'task', ['dev/accuracy'])
  assert list(table) == [('1',)]  # the finished run only
  reporter = reporting.Reporter(str(tmp_path / 'task=a,seed=0'), total_steps=10, log_every=1,
                                flops_per_step=None, peak_flops=None, tokens_per_step=1,
                                num_devices=1, start_step=5)
  reporter.log_event(5, event='resumed')
  reporter.close()
  lines = metrics.read_text().splitlines()
  assert [json.loads(line) for line in lines] == [*records, {'step': 5, 'event': 'resumed'}]


def test_a_runs_last_error_line():
  traceback = 'step 3/10 | ...\nTraceback (most recent call last):\n  File "x.py"\nKeyError: \'a\'\n'
  assert outcome.describe_exit(1, traceback) == "KeyError: 'a'"
  jax_abort = ('F1208 00:10:42.513428 7377 client.h:80] Terminating process because the JAX '
               'distributed service detected fatal errors.\n    @ 0x7ffa18e40634 absl::...\n')
  assert outcome.describe_exit(-6, jax_abort).startswith('killed by SIGABRT: F1208 00:10:42')
  assert outcome.describe_exit(-9, 'step 3/10 | ...\n') == 'killed by SIGKILL'
  assert outcome.describe_exit(2, 'error: a\nerror: b\n') == 'error: b'
  assert outcome.describe_exit(1, 'nothing\n') == 'exit status 1 (no error line in its log)'
