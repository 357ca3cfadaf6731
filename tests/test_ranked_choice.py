"""The ranked_choice task style (a style added in its own file and config): multiple choice
answered by the fine-tuned model's loss of each choice."""
import json
import os

import jax
import numpy as np

from configs import ranked_choice
from research import checkpointing, finetune
from tests.test_finetune import override, pretrained, read_metrics  # noqa: F401 (a fixture)


def choice_dir(path, rows=24):
  """Contexts whose right answer repeats their last word; three choices, a varying one right."""
  path.mkdir(parents=True, exist_ok=True)
  words = ['house', 'garden', 'letter', 'sister']
  for split, n in (('train', rows), ('dev', 8)):
    lines = []
    for i in range(n):
      right = words[i % 4]
      choices = [words[(i + 1) % 4], words[(i + 2) % 4]]
      choices.insert(i % 3, right)
      lines.append(json.dumps({'context': f'she went to the {right} , the', 'choices': choices,
                               'label': i % 3}))
    (path / f'{split}.jsonl').write_text('\n'.join(lines) + '\n')
  return str(path)


def test_ranked_choice_predicts_the_choice_of_lowest_loss(pretrained, tmp_path):
  config = override(ranked_choice.get_config(f'init_from={pretrained["gpt"]}'),
                    task__data_dir=choice_dir(tmp_path / 'data'), finetune__epochs=0.0,
                    train__steps=2, train__batch_size=8, train__eval_batch_size=8,
                    train__log_every=1, data__max_seq_len=24, task__max_target_len=6,
                    optim__warmup_steps=1, finetune__warmup_fraction=0.0)
  workdir = tmp_path / 'run'
  results = finetune.run_finetune(config, str(workdir))
  assert 0 <= results['dev/accuracy'] <= 1 and 'dev/loss' in results
  start = next(r for r in read_metrics(workdir) if r.get('event') == 'start')
  assert start['style'] == 'ranked_choice' and start['task_type'] == 'multiple_choice'
  lines = (workdir / 'predictions' / 'dev.tsv').read_text().splitlines()
  assert lines[0] == 'index\tprediction'
  assert {line.split('\t')[1] for line in lines[1:]} <= {'0', '1', '2'}

  # Each prediction is the choice whose row, scored alone, has the lowest mean loss.
  ft, _ = finetune.make_finetune(config, str(workdir))
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=1)
  params = ckpt.restore_params(ft.abstract_params)
  ckpt.close()
  split = ft.splits['dev']
  predicted = ft.style.predictions(params, split, {})
  objective, model = ft.style.objective, ft.style.model
  rows = split.choice_arrays
  for n in range(len(split.examples)):
    losses = []
    for k in range(split.num_choices):
      row = {key: v[n * split.num_choices + k][None] for key, v in rows.items()}
      total, weight = jax.device_get(objective.terms(model, params, row, None)['loss'])
      losses.append(total / weight)
    assert predicted[n] == int(np.argmin(losses))
  assert results['dev/accuracy'] == np.mean(
      [p == int(e.label) for p, e in zip(predicted, split.examples)])
