"""Sequence to sequence: the pretrained model itself writes the target text.

The objective `objectives.for_pairs` names for the family writes each (source, target) row
and the prompt decoding starts from (an encoder-decoder teacher-forced, T5 Sec 2.4 / BART
Sec 3.4; a decoder on the target after its prompt, GPT-2 Sec 3.7, or as a prefix LM, T5
Sec 3.2.1; an encoder on masked targets under UniLM's seq2seq mask, Sec 2.4, its noise drawn
per epoch in training and once per example for evaluation). Evaluation decodes greedily or
with `finetune.num_beams` and scores BLEU / chrF / exact match beside the copy-the-source
baseline.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from research import flops, generate, models, objectives
from research.tasks import features
from research.tasks.styles import base


def copy_baseline(task, dev) -> dict[str, float]:
  """Scores of copying each source unchanged."""
  return task.score(dev, [e.texts[0] for e in dev])


class Seq2Seq(base.TaskStyle):
  name = 'seq2seq'
  generates = True

  def __init__(self, config, task, model_cfg, tokenizer):
    super().__init__(config, task, model_cfg, tokenizer)
    ft = config.finetune
    self.objective, self.target_len = objectives.for_pairs(
        model_cfg, tokenizer, max_len=self.max_len, target_len=config.task.max_target_len,
        bidirectional_prompt=ft.bidirectional_prompt, target_mask_prob=ft.seq2seq_mask_prob)
    self.model = models.build(model_cfg)

  def encode(self, split, examples):
    """Rows for teacher forcing (unlabelled examples weigh 0) and the decoding prompts."""
    tok = self.tokenizer
    sources = tok.encode_batch([e.texts[0] for e in examples])
    targets = tok.encode_batch([e.target or '' for e in examples])
    rows, prompts = [], []
    for e, source, target in zip(examples, sources, targets):
      row, prompt = self.objective.pair_example(tok, source, target, max_len=self.max_len,
                                                target_len=self.target_len)
      if e.target is None:
        row.update({key: np.zeros_like(row[key]) for _, key in self.objective.loss_terms})
      rows.append(row)
      prompts.append(prompt)
    arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}
    encoded = features.EncodedSplit(examples, arrays, prompts=prompts)
    corrupt = self.corruptor()
    if split != 'train' and corrupt is not None:
      encoded = _noised_once(encoded, corrupt, self.config.train.seed)
    return encoded

  def corruptor(self):
    return self.objective.pair_corruptor(self.tokenizer)

  def init_params(self, train):
    return functools.partial(models.init_params, self.model, length=self.max_len)

  def pretrained(self, loaded):
    return None, loaded.params

  def predictions(self, params, split, outputs):
    """The decoded text of each example."""
    batch_size, tok = self.config.train.eval_batch_size, self.tokenizer
    texts = []
    for start in range(0, len(split.prompts), batch_size):
      new = generate.generate(self.model, params, split.prompts[start:start + batch_size],
                              max_new_tokens=self.target_len, pad_id=tok.pad_id,
                              num_beams=self.config.finetune.num_beams,
                              **self.objective.decoding(tok))
      texts += [tok.decode(ids) for ids in new]
    return texts

  def loss_metrics(self, means):
    """The teacher-forced loss of the target tokens (all, or the masked ones)."""
    means = self.objective.summarize(means)
    return {**means, 'perplexity': float(np.exp(means['loss']))}

  def baseline(self):
    return copy_baseline(self.task, self.task.splits['dev'])

  def flops_per_example(self, arrays):
    length, target = flops.example_lengths(arrays)
    return flops.model_flops(self.model_cfg, length=length, target_length=target,
                             vocab_positions=self.objective.vocab_positions(length))


def _noised_once(split: features.EncodedSplit, corrupt, seed: int) -> features.EncodedSplit:
  """An evaluation split with its noise drawn once, per example, from (seed, index)."""
  rows = [corrupt({k: v[i] for k, v in split.arrays.items()}, np.random.default_rng([seed, i]))
          for i in range(split.num_features)]
  arrays = {k: np.stack([r[k] for r in rows]) for k in split.arrays}
  return dataclasses.replace(split, arrays=arrays)


Style = Seq2Seq
