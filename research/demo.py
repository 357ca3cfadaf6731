"""`make demo`: pretrain a tiny BERT and a tiny GPT on the vendored Austen corpus, compare.

  python -m research.demo --workdir=workdirs/demo

Prints each model's held-out metrics beside a unigram baseline (a model that ignores context),
the wall time, and a greedy continuation from the GPT. Re-running resumes from the
checkpoints in --workdir (and so finishes at once when both runs are complete).
"""
from __future__ import annotations

import os
import time

from absl import app, flags

from configs import bert as bert_config, gpt as gpt_config
from research import checkpointing, generate, reporting, train
from research.data import pipeline

_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/demo', 'Where both runs live.')
_PROMPT = flags.DEFINE_string('prompt', 'It is a truth universally acknowledged, that',
                              'Prompt for the GPT continuation.')


def main(argv):
  del argv
  reporting.quiet_library_logs()
  results = {}
  for name, config in (('bert', bert_config.get_config('variant=tiny')),
                       ('gpt', gpt_config.get_config('variant=tiny'))):
    workdir = os.path.join(_WORKDIR.value, name)
    print(f'== training tiny {name.upper()} ({config.train.steps} steps) in {workdir}', flush=True)
    start = time.time()
    metrics = train.train_and_evaluate(config, workdir)
    exp = train.build(config, workdir)
    baseline = pipeline.unigram_baseline(exp.tokenizer, exp.train_docs, exp.eval_docs)
    results[name] = (metrics, baseline, time.time() - start, exp)

  bert_m, bert_base, bert_time, _ = results['bert']
  gpt_m, gpt_base, gpt_time, gpt_exp = results['gpt']
  print('\n== held-out results (Austen chapters never trained on)')
  print(f"{'model':10s} {'metric':22s} {'model':>8s} {'unigram baseline':>17s} {'wall':>7s}")
  print(f"{'BERT-tiny':10s} {'MLM accuracy':22s} {bert_m['mlm_accuracy']:8.3f} "
        f"{bert_base['most_frequent_token_accuracy']:17.3f} {bert_time:6.0f}s")
  print(f"{'':10s} {'NSP accuracy':22s} {bert_m['nsp_accuracy']:8.3f} {0.5:17.3f}")
  print(f"{'GPT-tiny':10s} {'perplexity':22s} {gpt_m['perplexity']:8.1f} "
        f"{gpt_base['unigram_perplexity']:17.1f} {gpt_time:6.0f}s")

  ckpt = checkpointing.Checkpointer(os.path.join(_WORKDIR.value, 'gpt', 'checkpoints'), keep=1)
  state, _ = ckpt.restore(gpt_exp.abstract_state)
  ckpt.close()
  text = generate.complete(gpt_exp.model, state.params, gpt_exp.tokenizer, _PROMPT.value,
                           max_new_tokens=40)
  print(f'\n== greedy continuation from GPT-tiny\n{_PROMPT.value}{text}')


if __name__ == '__main__':
  app.run(main)
