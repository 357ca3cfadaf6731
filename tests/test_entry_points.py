"""The entry points load a trained model as everything else does (loading.load_params): no
optimizer, no corpus, no rebuilt training run."""
import pytest

from configs import gpt as gpt_config
from research import finetune, generate, loading
from tests.conftest import run_main
from tests.test_finetune import finetune_cfg, sentiment_dir, tiny_pretrain


@pytest.fixture(scope='module')
def gpt(small_corpus, tmp_path_factory):
  return tiny_pretrain(gpt_config.get_config('variant=tiny'), small_corpus,
                       tmp_path_factory.mktemp('gpt'))


def test_generate_needs_only_the_workdir(gpt):
  """`--mode=generate --workdir=DIR` without --config: the workdir describes its model."""
  result = run_main(f'--workdir={gpt}', '--mode=generate', '--prompt=It is',
                    '--max_new_tokens=4')
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == generate.generate_from_workdir(gpt, ['It is'],
                                                                 max_new_tokens=4)[0].strip()
  refused = run_main(f'--workdir={gpt}', '--mode=eval')
  assert refused.returncode == 2 and 'error: --mode=eval needs --config' in refused.stderr


def test_evaluation_restores_params_without_an_optimizer(gpt, tmp_path, monkeypatch):
  config = finetune_cfg(sentiment_dir(tmp_path / 'data'), gpt)
  workdir = str(tmp_path / 'run')
  results = finetune.run_finetune(config, workdir)

  def no_optimizer(*args, **kwargs):
    raise AssertionError('evaluation built an optimizer')
  monkeypatch.setattr(finetune.optim, 'make_optimizer', no_optimizer)
  assert finetune.evaluate_finetuned(config, workdir) == results
  loaded = loading.load_params(gpt)
  assert loaded.step == 2 and loaded.cfg.arch == 'decoder'
