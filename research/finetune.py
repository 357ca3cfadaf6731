"""Fine-tuning: a pretrained encoder or decoder + one task head, trained end to end on a task.

BERT Sec 4 / Fig. 4 and GPT-1 Sec 3.2-3.3 / Fig. 1: every parameter is updated, only the
head starts from scratch. `config.finetune.init_from` names a pretraining workdir (empty: the
same architecture from random weights, the "no pretraining" baseline); `config.task` names
the data (research/tasks/task.py). The step loop is pretraining's (loop.py): one jitted step
with shardings and donation, Orbax checkpoints holding params, optimizer, PRNG and the input
iterator (so a killed run resumes exactly), metrics.jsonl through the Reporter.

`init_from` may also be a Hugging Face BERT or GPT-2 directory (research/convert imports it
with its own WordPiece / byte-level BPE vocabulary).

A fine-tuning workdir is self-contained: `pretrained.json` records the architecture and where
it came from and the tokenizer is copied in (`tokenizer.model`, or `hf_tokenizer/`), so
resuming and `--mode=eval` need neither the pretraining workdir nor its corpus. Dev metrics
are logged under `dev/` every `train.eval_every` steps; at the end every split is evaluated
(`dev/`, `test/`, MNLI's `dev_mismatched/` ...) and its predictions written to
`predictions/<split>.tsv` (unlabelled splits, e.g. GLUE test sets, get predictions only, in
GLUE's submission format).
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

from research import (checkpointing, convert, flops, loop, optim, reporting, sharding,
                      state as state_lib, steps)
from research.convert.hf_checkpoint import WEIGHTS_FILE
from research.convert.hf_tokenizer import HFTokenizer
from research.data import tokenizer as tokenizer_lib
from research.models import task_model
from research.models.config import ModelConfig
from research.tasks import encoding, features, losses
from research.tasks.task import Task, load_task

PRETRAINED_FILE = 'pretrained.json'
HF_TOKENIZER_DIR = 'hf_tokenizer'  # an imported checkpoint's vocabulary, kept in the workdir
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)


class Pretrained(NamedTuple):
  """What fine-tuning needs from a pretrained model, whatever produced it (a pretraining
  workdir here; research/convert's HF import can return the same)."""
  model_cfg: ModelConfig
  family: str  # 'encoder' | 'decoder'
  params: Any  # the backbone's parameter tree: Encoder's (BERT) or GPT's
  tokenizer: Any  # research.data.tokenizer.Tokenizer interface
  step: int  # pretraining step the params come from


def _read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: --config.finetune.init_from must be a '
                            'pretraining workdir (with config.json, tokenizer.model and '
                            f'checkpoints/) or an HF model directory (with {WEIGHTS_FILE})')
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _tokenizer_of(pre: ml_collections.ConfigDict, workdir: str):
  path = pre.data.tokenizer.path or os.path.join(workdir, 'tokenizer.model')
  return tokenizer_lib.Tokenizer.load(path), path


def is_hf_directory(path: str) -> bool:
  return os.path.exists(os.path.join(path, WEIGHTS_FILE))


def load_pretrained(path: str, mesh=None, step: int | None = None) -> Pretrained:
  """Backbone params, architecture and tokenizer of a pretraining workdir's checkpoint, or of
  an HF BERT / GPT-2 directory (imported by research/convert with its own vocabulary).

  A workdir's checkpoint is restored into the pretraining run's own state layout (rebuilt
  from its config.json), laid out over `mesh` (default: all devices), and only the backbone
  is kept: BERT's `encoder` subtree (MLM/NSP heads dropped) or the whole GPT tree.
  """
  if is_hf_directory(path):
    imported = convert.load(path)
    return Pretrained(imported.cfg, imported.family, imported.backbone, imported.tokenizer, 0)
  pre = _read_config(path)
  mesh = mesh or sharding.make_mesh(pre.mesh)
  tok, _ = _tokenizer_of(pre, path)
  model_cfg = ModelConfig.from_config(pre.model, vocab_size=pre.model.vocab_size or tok.vocab_size)
  objective = steps.Objective(pre.objective.name, pre.objective.max_predictions_per_seq)
  model = steps.build_model(objective, model_cfg)
  tx = optim.make_optimizer(pre.optim, pre.train.steps)
  abstract, _ = state_lib.sharded_init(
      functools.partial(steps.init_params, model, objective, pre.data.max_seq_len),
      tx, pre.train.seed, mesh)
  ckpt = checkpointing.Checkpointer(os.path.join(path, 'checkpoints'), keep=pre.checkpoint.keep)
  restored_step = step or ckpt.latest_step()
  if restored_step is None:
    raise checkpointing.CheckpointError(f'no checkpoint in {path}/checkpoints; pretrain first')
  state, _ = ckpt.restore(abstract, step=restored_step)
  ckpt.close()
  family = 'encoder' if objective.is_encoder else 'decoder'
  params = state.params['encoder'] if objective.is_encoder else state.params
  return Pretrained(model_cfg, family, params, tok, restored_step)


@dataclasses.dataclass
class FineTune:
  """What a fine-tuning config resolves to before any step runs (shared by train and eval)."""
  config: ml_collections.ConfigDict  # resolved: train.steps and warmup follow the data
  workdir: str
  mesh: Any
  task: Task
  tokenizer: Any
  style: encoding.InputStyle
  model_cfg: ModelConfig
  family: str
  model: task_model.TaskModel
  objective: losses.TaskObjective
  splits: dict[str, features.EncodedSplit]
  tx: Any
  abstract_state: state_lib.TrainState
  init_state: Any  # () -> TrainState (random weights everywhere)


def _architecture(config, workdir: str, task: Task, mesh, need_params: bool):
  """(model_cfg, family, tokenizer, pretrained or None).

  A fresh run with init_from restores the pretrained model (recording its architecture and
  copying its tokenizer into the workdir); a resumed run or an evaluation reads the record;
  without init_from, config.model is built from random weights with config.data.tokenizer.path
  (or a tokenizer trained on the task's training text).
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
      tok = _kept_tokenizer(workdir, record)
      return ModelConfig(**record['model']), record['family'], tok, None

  pretrained = None
  if init_from:
    pretrained = load_pretrained(init_from, mesh, config.finetune.init_step or None)
    model_cfg, family, tok = pretrained.model_cfg, pretrained.family, pretrained.tokenizer
    tokenizer_file = (None if is_hf_directory(init_from)
                      else _tokenizer_of(_read_config(init_from), init_from)[1])
  else:
    tokenizer_file = config.data.tokenizer.path or os.path.join(workdir, 'tokenizer.model')
    if config.data.tokenizer.path:  # e.g. the pretrained models' tokenizer, for a fair baseline
      tok = tokenizer_lib.Tokenizer.load(tokenizer_file)
    else:
      tok = tokenizer_lib.load_or_train(
          tokenizer_file, lambda: (t for e in task.splits['train'] for t in (*e.texts, *e.words)),
          vocab_size=config.data.tokenizer.vocab_size,
          model_type=config.data.tokenizer.model_type,
          max_sentences=config.data.tokenizer.max_training_sentences)
    model_cfg = ModelConfig.from_config(config.model,
                                        vocab_size=config.model.vocab_size or tok.vocab_size)
    family = config.finetune.family
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(record_path, 'w') as f:
      json.dump({'family': family, 'model': dataclasses.asdict(model_cfg),
                 'init_from': init_from, 'init_step': pretrained.step if pretrained else None,
                 'tokenizer': _keep_tokenizer(tok, tokenizer_file, workdir)}, f, indent=2)
  return model_cfg, family, tok, pretrained


def _keep_tokenizer(tok, source_file: str | None, workdir: str) -> str:
  """Copies the tokenizer into the workdir: the SentencePiece model file, or (source_file
  None) an imported HF vocabulary. Returns its kind, for `_kept_tokenizer`."""
  if source_file is None:
    tok.save(os.path.join(workdir, HF_TOKENIZER_DIR))
    return 'hf'
  local_copy = os.path.join(workdir, 'tokenizer.model')
  if os.path.abspath(source_file) != os.path.abspath(local_copy):
    shutil.copyfile(source_file, local_copy)
  return 'sentencepiece'


def _kept_tokenizer(workdir: str, record: dict):
  """The tokenizer `_keep_tokenizer` stored in the workdir."""
  if record.get('tokenizer') == 'hf':
    directory = os.path.join(workdir, HF_TOKENIZER_DIR)
    if record['family'] == 'encoder':
      return HFTokenizer.load_wordpiece(directory)
    return HFTokenizer.load_byte_level_bpe(directory)
  return tokenizer_lib.Tokenizer.load(os.path.join(workdir, 'tokenizer.model'))


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


def build(config: ml_collections.ConfigDict, workdir: str,
          need_params: bool = False) -> tuple[FineTune, Pretrained | None]:
  """Reads and encodes the task, resolves the model and plans the sharded state; with
  `need_params` (a run without a checkpoint yet) also restores init_from's weights."""
  mesh = sharding.make_mesh(config.mesh)
  task = load_task(config.task)
  model_cfg, family, tok, pretrained = _architecture(config, workdir, task, mesh, need_params)
  model_cfg.check_length(config.data.max_seq_len)
  style_name = config.finetune.input_style
  style = encoding.InputStyle.create(
      {'encoder': 'bert', 'decoder': 'gpt'}[family] if style_name == 'auto' else style_name, tok)
  splits = {name: features.encode_split(task, examples, tok, style, config.data.max_seq_len,
                                        config.task)
            for name, examples in task.splits.items()}
  config = _resolve(config, splits['train'].num_features)
  model = task_model.TaskModel(model_cfg, family, task.type, task.num_outputs,
                               bilstm_size=config.finetune.bilstm_size)
  objective = losses.TaskObjective(task.type, config.finetune.lm_loss_weight
                                   if family == 'decoder' else 0.0)
  tx = optim.make_optimizer(config.optim, config.train.steps)
  train_ids = splits['train'].arrays['input_ids']
  num_views = train_ids.shape[1] if train_ids.ndim == 3 else 1
  init_params = functools.partial(task_model.init_params, model, config.data.max_seq_len,
                                  num_views)
  abstract, init = state_lib.sharded_init(init_params, tx, config.train.seed, mesh)
  return FineTune(config, workdir, mesh, task, tok, style, model_cfg, family, model, objective,
                  splits, tx, abstract, init), pretrained


def _load_backbone(ft: FineTune, state: state_lib.TrainState,
                   pretrained: Pretrained) -> state_lib.TrainState:
  """Replaces the fresh backbone with the pretrained one (same layout; checked leaf by leaf).
  Adam's moments start at zero either way, so only params change."""
  key = 'encoder' if ft.family == 'encoder' else 'decoder'
  target = ft.abstract_state.params[key]
  want = jax.tree_util.tree_flatten_with_path(target)[0]
  have = dict(jax.tree_util.tree_flatten_with_path(pretrained.params)[0])
  for path, leaf in want:
    got = have.get(path)
    if got is None or got.shape != leaf.shape:
      name = jax.tree_util.keystr(path)
      raise checkpointing.CheckpointError(
          f'pretrained parameter {key}{name} is {None if got is None else got.shape} but the '
          f'task model needs {leaf.shape}; init_from must hold a model of this architecture')
  loaded = jax.tree.map(lambda x, t: jax.device_put(x, t.sharding), pretrained.params, target)
  return state.replace(params={**state.params, key: loaded})


def make_eval_fn(ft: FineTune):
  """evaluate(params, split) -> (metrics, predictions): task metrics plus mean loss terms."""
  config = ft.config
  batch_size = config.train.eval_batch_size
  if batch_size % ft.mesh.devices.size:
    raise ValueError(f'--config.train.eval_batch_size={batch_size} must be divisible by the '
                     f'{ft.mesh.devices.size} devices')
  shardings = state_lib.shardings_of(ft.abstract_state)
  replicated = NamedSharding(ft.mesh, P())
  # Outputs are gathered onto every device so each process can read all predictions.
  eval_step = jax.jit(functools.partial(losses.eval_step, model=ft.model,
                                        objective=ft.objective),
                      in_shardings=(shardings.params, sharding.batch_sharding(ft.mesh)),
                      out_shardings=replicated)

  def evaluate(params, split_name: str) -> tuple[dict[str, float], list]:
    split = ft.splits[split_name]
    n = split.num_features
    totals, outputs = None, []
    for start in range(0, n, batch_size):
      rows = {k: v[start:start + batch_size] for k, v in split.arrays.items()}
      pad = batch_size - len(rows['input_ids'])  # zero rows carry zero label weight
      rows = {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) for k, v in rows.items()}
      terms, out = eval_step(params, sharding.global_batch(sharding.process_rows(rows), ft.mesh))
      terms, out = jax.device_get((terms, out))
      totals = terms if totals is None else jax.tree.map(np.add, totals, terms)
      outputs.append({k: v[:batch_size - pad] for k, v in out.items()})
    outputs = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    predictions = features.to_predictions(ft.task, split, outputs, config.task)
    metrics = {}
    if split.labelled:
      metrics = {k: float(v[0] / max(v[1], 1e-9)) for k, v in totals.items()
                 if k != 'accuracy'}  # the task's own metrics follow
      metrics.update(ft.task.score(split.examples, predictions))
    return metrics, predictions

  return evaluate


def _write_predictions(ft: FineTune, split_name: str, predictions: list):
  if jax.process_index() != 0:
    return
  directory = os.path.join(ft.workdir, 'predictions')
  os.makedirs(directory, exist_ok=True)
  rows = features.prediction_rows(ft.task, ft.splits[split_name], predictions)
  with open(os.path.join(directory, f'{split_name}.tsv'), 'w', encoding='utf-8') as f:
    f.write('\n'.join(rows) + '\n')


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
  ds = ds[jax.process_index()::jax.process_count()]
  ds = ds.batch(ft.config.train.batch_size // jax.process_count(), drop_remainder=True)
  return ds.to_iter_dataset(_READ_OPTIONS)


def _flops_per_step(ft: FineTune) -> float:
  cfg, config = ft.model_cfg, ft.config
  per_token = flops.transformer_flops_per_token(
      num_layers=cfg.num_layers, d_model=cfg.d_model, d_ff=cfg.d_ff, num_heads=cfg.num_heads,
      seq_len=config.data.max_seq_len,
      vocab_size=cfg.vocab_size if ft.objective.lm_loss_weight else 0, training=True)
  ids = ft.splits['train'].arrays['input_ids']
  return per_token * config.train.batch_size * int(np.prod(ids.shape[1:]))


def _check_batch(config, mesh):
  size, accum = config.train.batch_size, config.train.grad_accum_steps
  if size % (mesh.devices.size * accum) or size % jax.process_count():
    raise ValueError(f'--config.train.batch_size={size} must be divisible by the '
                     f'{mesh.devices.size} devices x {accum} accumulation steps')


def run_finetune(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Fine-tunes to the resolved step count (resuming from workdir); returns final metrics
  of every labelled evaluation split, keyed '<split>/<metric>'."""
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                    keep=config.checkpoint.keep)
  latest = ckpt.latest_step()
  ft, pretrained = build(config, workdir, need_params=latest is None)
  config = ft.config
  is_chief = jax.process_index() == 0
  if is_chief:
    reporting.write_run_info(workdir, config)
  _check_batch(config, ft.mesh)
  data_iter = iter(_train_dataset(ft))
  if latest is None:
    state = ft.init_state()
    if pretrained:
      state = _load_backbone(ft, state, pretrained)
  else:
    state, data_state = ckpt.restore(ft.abstract_state)
    data_iter.set_state(data_state)
    logging.info('resumed fine-tuning from step %d of %s', state.step, workdir)

  train_step = loop.compile_step(
      functools.partial(losses.train_step, model=ft.model, objective=ft.objective, tx=ft.tx,
                        grad_accum_steps=config.train.grad_accum_steps),
      ft.abstract_state, ft.mesh)
  evaluate = make_eval_fn(ft)
  ids = ft.splits['train'].arrays['input_ids']
  reporter = reporting.Reporter(
      workdir, total_steps=config.train.steps, log_every=config.train.log_every,
      flops_per_step=_flops_per_step(ft), peak_flops=flops.peak_flops(ft.model_cfg.dtype),
      tokens_per_step=config.train.batch_size * int(np.prod(ids.shape[1:])),
      num_devices=ft.mesh.devices.size, start_step=int(state.step), is_chief=is_chief)
  start = int(state.step)
  if start == 0:
    baseline = features.majority_baseline(ft.task, ft.task.splits['train'],
                                          ft.task.splits['dev'])
    reporter.log_event(0, event='start', task=ft.task.name, task_type=ft.task.type,
                       family=ft.family, init_from=config.finetune.init_from,
                       params=state_lib.param_count(state.params),
                       train_examples=len(ft.task.splits['train']),
                       **{f'baseline/{k}': v for k, v in baseline.items()})
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
  metrics.jsonl (and predictions files rewritten)."""
  if not os.path.exists(os.path.join(workdir, PRETRAINED_FILE)):
    raise checkpointing.CheckpointError(f'{workdir} holds no fine-tuning run ({PRETRAINED_FILE} '
                                        'missing); fine-tune first')
  ft, _ = build(config, workdir)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                    keep=ft.config.checkpoint.keep)
  step = ckpt.latest_step()
  if step is None:
    raise checkpointing.CheckpointError(f'no checkpoint in {workdir}/checkpoints; fine-tune '
                                        'first')
  state, _ = ckpt.restore(ft.abstract_state)
  ckpt.close()
  reporter = reporting.Reporter(workdir, total_steps=step, log_every=1, flops_per_step=None,
                                peak_flops=None, tokens_per_step=0,
                                is_chief=jax.process_index() == 0)
  results = _final_eval(ft, make_eval_fn(ft), state.params, reporter, step)
  reporter.close()
  return results
