"""What the head styles share: a task head on the pretrained backbone (models/task_model.py),
inputs packed BERT- or GPT-1-style (tasks/encoding.py), the task's loss (tasks/losses.py).

BERT Sec 4 / Fig. 4 and GPT-1 Sec 3.3 / Fig. 1: every parameter is fine-tuned; only the head
(and an optional BiLSTM, BERT Table 5) starts from random weights. Which input format and
whether GPT-1's auxiliary LM loss applies are the model's answers (task_model.input_format,
task_model.has_lm_logits), so nothing here asks which family it is.
"""
from __future__ import annotations

import functools

import numpy as np

from research import flops
from research.models import task_model
from research.models.encoder_decoder import start_id
from research.tasks import encoding, losses
from research.tasks.styles import base


class HeadStyle(base.TaskStyle):

  def __init__(self, config, task, model_cfg, tokenizer):
    super().__init__(config, task, model_cfg, tokenizer)
    ft = config.finetune
    name = task_model.input_format(model_cfg) if ft.input_style == 'auto' else ft.input_style
    self.inputs = encoding.InputStyle.create(name, tokenizer)
    self.model = task_model.TaskModel(
        model_cfg, task.type, task.num_outputs, bilstm_size=ft.bilstm_size,
        decoder_start_id=start_id(tokenizer, model_cfg.decoder_start))
    self.objective = losses.TaskObjective(
        task.type, ft.lm_loss_weight if task_model.has_lm_logits(model_cfg) else 0.0)

  def init_params(self, train):
    ids = train.arrays['input_ids']
    num_views = ids.shape[1] if ids.ndim == 3 else 1  # pair orders / choices
    return functools.partial(task_model.init_params, self.model, self.max_len, num_views)

  def pretrained(self, loaded):
    return task_model.backbone_params(loaded.cfg, loaded.params)

  def flops_per_example(self, arrays):
    """Each view (pair order, choice) is read once; the LM head counts when GPT-1's auxiliary
    loss trains it."""
    views = int(np.prod(arrays['input_ids'].shape[1:-1]))  # 1, or pair orders / choices
    length = arrays['input_ids'].shape[-1]
    lm = self.objective.lm_loss_weight > 0
    return views * flops.model_flops(
        self.model_cfg, length=length,
        target_length=task_model.decoder_length(self.model_cfg, length),
        vocab_positions=length if lm else 0)
