"""Multiple choice ranked by the fine-tuned model's loss of each choice
(research/tasks/styles/ranked_choice.py; GPT-1 Sec 3.3's RACE / Story Cloze tasks, GPT-3
Sec 2.4's scoring).

  python -m research.main --config=configs/ranked_choice.py:init_from=/tmp/gpt_tiny \
      --config.task.data_dir=DIR --workdir=/tmp/ranked

DIR holds train.jsonl and dev.jsonl, one {"context": ..., "choices": [...], "label": k} a
line (--config.task.text_columns / choice_columns / label_column name other keys). Any
pretrained family serves (init_from): the model learns to write the right choice after the
context and picks the choice it finds most probable. Expected: above chance (1 / choices) on
a task the pretraining text bears on.
"""
from configs import finetune


def get_config(arg: str = ''):
  c = finetune.get_config(f'task=custom,{arg}' if arg else 'task=custom').unlock()
  c.task.format = 'jsonl'
  c.task.type = 'multiple_choice'
  c.task.style = 'ranked_choice'
  c.task.text_columns = 'context'
  c.task.choice_columns = 'choices'
  c.task.label_column = 'label'
  c.task.max_target_len = 16  # an answer's tokens, with its end token
  return c.lock()
