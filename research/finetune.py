"""Fine-tuning: a pretrained model (any arch) + one task head, trained end to end on a task.

BERT Sec 4 / Fig. 4, GPT-1 Sec 3.2-3.3 / Fig. 1 and BART Sec 3.1: every parameter is updated,
only the head starts from scratch. Seq2seq tasks (and classification cast as text to text,
T5 Sec 2.4) train the pretraining model itself on the target text. What differs between
those is the task style (research/tasks/styles/: how examples become batches, which loss
terms, how outputs become predictions and scores); this module is the loop around it.
`config.finetune.init_from` names a pretraining workdir or a Hugging Face model directory
(empty: the same architecture from random weights, the "no pretraining" baseline), read by
`loading.load_params` (params only); `config.task` names the data (research/tasks/task.py).
The step is the one train step of research/steps.py and the loop pretraining's (loop.py):
one jitted step with shardings and donation, Orbax checkpoints holding params, optimizer,
PRNG and the input iterator (so a killed run resumes exactly), metrics.jsonl through the
Reporter.

A fine-tuning workdir is self-contained: `pretrained.json` records the architecture and where
it came from, `model.json` the architecture alone, and the tokenizer is copied in
(`tokenizer.model`, or `hf_tokenizer/`), so resuming and `--mode=eval` need neither the
pretraining workdir nor its corpus. Dev metrics are logged under `dev/` every
`train.eval_every` steps; at the end every split is evaluated (`dev/`, `test/`, MNLI's
`dev_mismatched/` ...) and its predictions written to `predictions/<split>.tsv` (unlabelled
splits, e.g. GLUE test sets, get predictions only, in GLUE's submission format). Seq2seq
splits are decoded (greedy, or `finetune.num_beams`) and scored by BLEU / chrF / exact match
beside the copy-the-source baseline.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
from typing import Any, NamedTuple

import grain
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from research import (checkpointing, flops, loading, loop, models, optim, reporting,
                      sharding, state as state_lib, steps)
from research import atomic_file  # predictions: whole or not at all
from research.data import tokenizer as tokenizer_lib
from research.models.config import ModelConfig
from research.tasks import features, styles
from research.tasks.task import Task, load_task

PRETRAINED_FILE = 'pretrained.json'
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)


@dataclasses.dataclass
class FineTune:
  """What a fine-tuning config resolves to before any step runs (shared by train and eval)."""
  config: ml_collections.ConfigDict  # resolved: train.steps and warmup follow the data
  workdir: str
  mesh: jax.sharding.Mesh
  task: Task  # as the style reads it (text-to-text: sources and label words)
  tokenizer: Any  # research.data.tokenizer.Tokenizer interface
  model_cfg: ModelConfig
  style: styles.TaskStyle  # owns the model, the objective, encoding and predictions
  splits: dict[str, features.EncodedSplit]
  abstract_params: Any  # ShapeDtypeStructs with shardings: what a checkpoint's params fill


class Training(NamedTuple):
  """What training adds to a FineTune (evaluation restores params without any of it)."""
  tx: Any  # optax.GradientTransformation
  abstract_state: state_lib.TrainState
  init_state: Any  # () -> TrainState (random weights everywhere)


def training_state(ft: FineTune) -> Training:
  """The optimizer and the sharded TrainState layout of a fine-tuning run."""
  tx = optim.make_optimizer(ft.config.optim, ft.config.train.steps)
  abstract, init = state_lib.sharded_init(ft.style.init_params(ft.splits['train']), tx,
                                          ft.config.train.seed, ft.mesh)
  return Training(tx, abstract, init)


def _architecture(config, workdir: str, task: Task, mesh, need_params: bool):
  """(model_cfg, tokenizer, loaded or None).

  A fresh run with init_from loads the pretrained model (recording its architecture and
  copying its tokenizer into the workdir); a resumed run or an evaluation reads the record;
  without init_from, config.model is built from random weights with config.data.tokenizer.path
  (or a tokenizer trained on the task's training text, sources and targets alike).
  """
  record_path = os.path.join(workdir, PRETRAINED_FILE)
  init_from = config.finetune.init_from
  if os.path.exists(record_path):
    with open(record_path) as f:
      record = json.load(f)
    if record['init_from'] != init_from:
      raise ValueError(f'{workdir} was fine-tuned from init_from={record["init_from"]!r}, not '
                       f'{init_from!r}; use a fresh --workdir')
    if not (need_params and init_from):
      return ModelConfig(**record['model']), loading.load_tokenizer(workdir), None

  loaded = None
  if init_from:
    loaded = loading.load_params(init_from, config.finetune.init_step or None, mesh,
                                 scan_layers=config.model.get('scan_layers'))
    model_cfg, tok = loaded.cfg, loaded.tokenizer
  else:
    path = loading.tokenizer_path(workdir, config.data.tokenizer.path)
    if config.data.tokenizer.path:  # e.g. the pretrained models' tokenizer, for a fair baseline
      tok = tokenizer_lib.Tokenizer.load(path)
    else:
      tok = tokenizer_lib.load_or_train(
          path, lambda: (t for e in task.splits['train']
                         for t in (*e.texts, *e.words, *filter(None, [e.target]))),
          vocab_size=config.data.tokenizer.vocab_size,
          model_type=config.data.tokenizer.model_type,
          max_sentences=config.data.tokenizer.max_training_sentences)
    model_cfg = ModelConfig.from_config(config.model,
                                        vocab_size=config.model.vocab_size or tok.vocab_size)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    kind = _keep_tokenizer(tok, init_from, workdir)
    with open(record_path, 'w') as f:
      json.dump({'model': model_cfg.to_dict(), 'init_from': init_from,
                 'init_step': loaded.step if loaded else None, 'tokenizer': kind}, f, indent=2)
  loading.write_model_config(workdir, model_cfg)
  return model_cfg, tok, loaded


def _keep_tokenizer(tok, init_from: str, workdir: str) -> str:
  """Copies the tokenizer into the workdir: an imported vocabulary (HF directory, or a
  workdir that kept one) to hf_tokenizer/, a SentencePiece model to tokenizer.model."""
  if not isinstance(tok, tokenizer_lib.Tokenizer):
    tok.save(os.path.join(workdir, loading.HF_TOKENIZER_DIR))
    return 'hf'
  source = loading.tokenizer_path(init_from) if init_from else None
  local_copy = os.path.join(workdir, 'tokenizer.model')
  if source and os.path.abspath(source) != os.path.abspath(local_copy):
    shutil.copyfile(source, local_copy)
  return 'sentencepiece'


def _resolve(config, num_train: int) -> ml_collections.ConfigDict:
  """A copy of `config` whose train.steps and optim.warmup_steps follow finetune.epochs and
  finetune.warmup_fraction (BERT's run_classifier: 10% of the updates warm up)."""
  config = config.copy_and_resolve_references()
  ft = config.finetune
  if ft.epochs > 0:
    config.train.steps = max(1, math.ceil(ft.epochs * num_train / config.train.batch_size))
  if ft.warmup_fraction > 0:
    config.optim.warmup_steps = int(ft.warmup_fraction * config.train.steps)
  return config.lock()


def make_finetune(config: ml_collections.ConfigDict, workdir: str,
                  need_params: bool = False) -> tuple[FineTune, Any]:
  """Reads the task, resolves the model and its task style, encodes every split and plans the
  sharded params; with `need_params` (a run without a checkpoint yet) also loads init_from's
  weights (loading.Loaded, else None)."""
  mesh = sharding.make_mesh(config.mesh)
  task = load_task(config.task)
  if task.dropped.total and jax.process_index() == 0:  # once per run (readers.DroppedRows)
    logging.warning('%s', task.dropped.message())
  model_cfg, tok, loaded = _architecture(config, workdir, task, mesh, need_params)
  model_cfg.check_length(config.data.max_seq_len)
  style = styles.create(config, task, model_cfg, tok)
  splits = {name: style.encode(name, examples) for name, examples in style.task.splits.items()}
  config = _resolve(config, splits['train'].num_features)
  abstract = state_lib.abstract_params(style.init_params(splits['train']), mesh)
  return FineTune(config, workdir, mesh, style.task, tok, model_cfg, style, splits,
                  abstract), loaded


def _load_pretrained(ft: FineTune, state: state_lib.TrainState, loaded) -> state_lib.TrainState:
  """Replaces the fresh weights of the pretrained part (the style's: all of them for a
  text-writing model, the backbone under a task head) by the loaded ones, checked leaf by
  leaf. Adam's moments start at zero either way, so only params change."""
  key, source = ft.style.pretrained(loaded)
  target = ft.abstract_params if key is None else ft.abstract_params[key]
  want = jax.tree_util.tree_flatten_with_path(target)[0]
  have = dict(jax.tree_util.tree_flatten_with_path(source)[0])
  for path, leaf in want:
    got = have.get(path)
    if got is None or got.shape != leaf.shape:
      name = jax.tree_util.keystr(path)
      raise checkpointing.CheckpointError(
          f'pretrained parameter {key or ""}{name} is {None if got is None else got.shape} but '
          f'the fine-tuned model needs {leaf.shape}; init_from must hold a model of this '
          'architecture')
  placed = jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), source, target)
  return state.replace(params=placed if key is None else {**state.params, key: placed})


def make_eval_fn(ft: FineTune):
  """evaluate(params, split) -> (metrics, predictions): task metrics plus mean loss terms."""
  batch_size = ft.config.train.eval_batch_size
  sharding.check_batch('--config.train.eval_batch_size', batch_size, ft.mesh)
  shardings = jax.tree.map(lambda x: x.sharding, ft.abstract_params)
  # Outputs are gathered onto every device so each process can read all predictions.
  eval_step = jax.jit(functools.partial(steps.eval_step, model=ft.style.model,
                                        objective=ft.style.objective),
                      in_shardings=(shardings, sharding.batch_sharding(ft.mesh)),
                      out_shardings=NamedSharding(ft.mesh, P()))

  def batches(split):
    for start in range(0, split.num_features, batch_size):
      rows = {k: v[start:start + batch_size] for k, v in split.arrays.items()}
      pad = batch_size - len(rows['input_ids'])  # zero rows carry zero label weight
      rows = {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in rows.items()}
      yield pad, sharding.global_batch(sharding.process_rows(rows), ft.mesh)

  def evaluate(params, split_name: str) -> tuple[dict[str, float], list]:
    split = ft.splits[split_name]
    totals, outputs = None, []
    for pad, batch in batches(split):
      terms, out = jax.device_get(eval_step(params, batch))
      totals = terms if totals is None else jax.tree.map(np.add, totals, terms)
      outputs.append({k: v[:batch_size - pad] for k, v in out.items()})
    outputs = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    predictions = ft.style.predictions(params, split, outputs)
    metrics = {}
    if split.labelled:
      means = ft.style.loss_metrics({k: float(v[0] / max(v[1], 1e-9)) for k, v in totals.items()})
      # Token accuracies are the objective's; the task's own metrics follow.
      metrics = {k: float(v) for k, v in means.items() if not k.endswith('accuracy')}
      metrics.update(ft.style.score(split.examples, predictions))
    return metrics, predictions

  return evaluate


def _write_predictions(ft: FineTune, split_name: str, predictions: list):
  if jax.process_index() != 0:
    return
  directory = os.path.join(ft.workdir, 'predictions')
  os.makedirs(directory, exist_ok=True)
  rows = ft.style.prediction_rows(ft.splits[split_name], predictions)
  atomic_file.write_text(os.path.join(directory, f'{split_name}.tsv'), '\n'.join(rows) + '\n')


def _final_eval(ft: FineTune, evaluate, params, reporter, step: int) -> dict[str, float]:
  """Every non-train split: metrics to metrics.jsonl (labelled) and predictions files."""
  results = {}
  for name in ft.splits:
    if name == 'train':
      continue
    metrics, predictions = evaluate(params, name)
    _write_predictions(ft, name, predictions)
    if metrics:
      reporter.eval(step, metrics, prefix=name)
      results.update({f'{name}/{k}': v for k, v in metrics.items()})
  return results


def _train_dataset(ft: FineTune) -> grain.IterDataset:
  """Shuffled (reseeded each epoch), repeated, sharded over processes, resumable."""
  arrays = ft.splits['train'].arrays
  rows = [{k: v[i] for k, v in arrays.items()} for i in range(len(arrays['input_ids']))]
  ds = grain.MapDataset.source(rows).seed(ft.config.train.seed).shuffle().repeat()
  corrupt = ft.style.corruptor()
  if corrupt is not None:  # drawn before sharding: keyed by the global stream position
    ds = ds.random_map(corrupt)
  ds = ds[jax.process_index()::jax.process_count()]
  ds = ds.batch(ft.config.train.batch_size // jax.process_count(), drop_remainder=True)
  return ds.to_iter_dataset(_READ_OPTIONS)


def run_finetune(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Fine-tunes to the resolved step count (resuming from workdir); returns final metrics
  of every labelled evaluation split, keyed '<split>/<metric>'."""
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                    keep=config.checkpoint.keep)
  ft, pretrained = make_finetune(config, workdir, need_params=ckpt.latest_step() is None)
  config = ft.config
  is_chief = jax.process_index() == 0
  if is_chief:
    reporting.write_run_info(workdir, config)
  sharding.check_batch('--config.train.batch_size', config.train.batch_size, ft.mesh,
                       config.train.grad_accum_steps)
  data_iter = iter(_train_dataset(ft))
  training = training_state(ft)
  init = lambda: (_load_pretrained(ft, training.init_state(), pretrained) if pretrained
                  else training.init_state())
  state = loop.init_or_resume(ckpt, training.abstract_state, init, data_iter, workdir)
  train_step = loop.compile_step(
      functools.partial(steps.train_step, model=ft.style.model, objective=ft.style.objective,
                        tx=training.tx, grad_accum_steps=config.train.grad_accum_steps),
      training.abstract_state, ft.mesh)
  evaluate = make_eval_fn(ft)
  arrays = ft.splits['train'].arrays
  length, target = flops.example_lengths(arrays)
  views = int(np.prod(arrays['input_ids'].shape[1:-1]))  # pair orders / choices
  reporter = reporting.Reporter(
      workdir, total_steps=config.train.steps, log_every=config.train.log_every,
      flops_per_step=ft.style.flops_per_example(arrays) * config.train.batch_size,
      peak_flops=flops.peak_flops(ft.model_cfg.dtype),
      # Encoder-decoders count source and target tokens.
      tokens_per_step=config.train.batch_size * (views * length + target),
      num_devices=ft.mesh.devices.size, start_step=int(state.step), is_chief=is_chief)
  start = int(state.step)
  if start == 0:
    reporter.log_event(0, event='start', task=ft.task.name, task_type=ft.task.type,
                       style=ft.style.name, arch=ft.model_cfg.arch,
                       init_from=config.finetune.init_from,
                       params=models.param_count(state.params),
                       train_examples=len(ft.task.splits['train']),
                       **ft.task.dropped.log_fields(),
                       **(ft.task.dev_split.log_fields() if ft.task.dev_split else {}),
                       **{f'baseline/{k}': v for k, v in ft.style.baseline().items()})
  else:
    reporter.log_event(start, event='resumed')

  def after_step(done: int, state) -> dict | None:
    if done == config.train.steps:
      return _final_eval(ft, evaluate, state.params, reporter, done)
    if done % config.train.eval_every == 0:
      reporter.eval(done, evaluate(state.params, 'dev')[0], prefix='dev')
    return None

  state, results = loop.run(
      state, train_step, data_iter, ft.mesh, total_steps=config.train.steps, reporter=reporter,
      ckpt=ckpt, checkpoint_every=config.checkpoint.every, after_step=after_step,
      max_skipped_steps=config.train.max_skipped_steps)
  if not results:  # already complete when started
    results = {f'dev/{k}': v for k, v in evaluate(state.params, 'dev')[0].items()}
  ckpt.close()
  reporter.close()
  return results


def evaluate_finetuned(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """`--mode=eval` of a fine-tuning workdir: every split of the latest checkpoint, appended to
  metrics.jsonl (and predictions files rewritten). Only the params are restored (no
  optimizer is built)."""
  if not os.path.exists(os.path.join(workdir, PRETRAINED_FILE)):
    raise checkpointing.CheckpointError(f'{workdir} holds no fine-tuning run ({PRETRAINED_FILE} '
                                        'missing); fine-tune first')
  ft, _ = make_finetune(config, workdir)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                    keep=ft.config.checkpoint.keep)
  step = ckpt.latest_step()
  if step is None:
    raise checkpointing.CheckpointError(f'no checkpoint in {workdir}/checkpoints; fine-tune '
                                        'first')
  params = ckpt.restore_params(ft.abstract_params, step)
  ckpt.close()
  reporter = reporting.Reporter(workdir, total_steps=step, log_every=1, flops_per_step=None,
                                peak_flops=None, tokens_per_step=0,
                                is_chief=jax.process_index() == 0)
  results = _final_eval(ft, make_eval_fn(ft), params, reporter, step)
  reporter.close()
  return results
