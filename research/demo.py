"""`make demo`: pretrain a tiny BERT and a tiny GPT on the vendored Austen corpus, compare.

  python -m research.demo --workdir=workdirs/demo

Prints each model's held-out metrics beside a unigram baseline (a model that ignores context,
logged by each run when it started), the wall time, and two continuations from the GPT: greedy,
and sampled with nucleus (top-p) sampling at a fixed seed (Holtzman et al. 2020, Sec 3.1:
greedy decoding of a small LM falls into loops that sampling from the head of the
distribution avoids). The GPT is read back as any trained model is, by `loading.load_params`.
Re-running resumes from the checkpoints in --workdir (and so finishes at once when both runs
are complete).
"""
from __future__ import annotations

import json
import os
import time

from absl import app, flags

from configs import bert as bert_config, gpt as gpt_config
from research import generate, loading, models, reporting, train

_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/demo', 'Where both runs live.')
_PROMPT = flags.DEFINE_string('prompt', 'It is a truth universally acknowledged, that',
                              'Prompt for the GPT continuation.')


def baseline(workdir: str) -> dict[str, float]:
  """The unigram baseline a run logged in its `start` event (metrics.jsonl)."""
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    start = next(r for r in map(json.loads, f) if r.get('event') == 'start')
  return {k.removeprefix('baseline/'): v for k, v in start.items() if k.startswith('baseline/')}


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
    results[name] = (metrics, baseline(workdir), time.time() - start)

  bert_m, bert_base, bert_time = results['bert']
  gpt_m, gpt_base, gpt_time = results['gpt']
  print('\n== held-out results (Austen chapters never trained on)')
  print(f"{'model':10s} {'metric':22s} {'model':>8s} {'unigram baseline':>17s} {'wall':>7s}")
  print(f"{'BERT-tiny':10s} {'MLM accuracy':22s} {bert_m['mlm_accuracy']:8.3f} "
        f"{bert_base['most_frequent_token_accuracy']:17.3f} {bert_time:6.0f}s")
  print(f"{'':10s} {'NSP accuracy':22s} {bert_m['nsp_accuracy']:8.3f} {0.5:17.3f}")
  print(f"{'GPT-tiny':10s} {'perplexity':22s} {gpt_m['perplexity']:8.1f} "
        f"{gpt_base['unigram_perplexity']:17.1f} {gpt_time:6.0f}s")

  cfg, params, tokenizer, _ = loading.load_params(os.path.join(_WORKDIR.value, 'gpt'))
  model = models.build(cfg)
  greedy = generate.complete(model, params, tokenizer, _PROMPT.value, max_new_tokens=40)
  sampled = generate.complete(model, params, tokenizer, _PROMPT.value, max_new_tokens=40,
                              temperature=1.0, top_p=0.9, seed=0)
  print(f'\n== greedy continuation from GPT-tiny\n{_PROMPT.value}{greedy}')
  print(f'\n== sampled continuation (top-p 0.9, seed 0)\n{_PROMPT.value}{sampled}')


if __name__ == '__main__':
  app.run(main)
