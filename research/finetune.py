"""Fine-tuning: a pretrained model (any arch) + one task head, trained end to end on a task.

BERT Sec 4 / Fig. 4, GPT-1 Sec 3.2-3.3 / Fig. 1 and BART Sec 3.1: every parameter is updated,
only the head starts from scratch. Seq2seq tasks (and classification cast as text to text,
T5 Sec 2.4) train the pretraining model itself on the target text. `config.finetune.init_from`
names a pretraining workdir or a Hugging Face model directory (empty: the same architecture
from random weights, the "no pretraining" baseline), read by `loading.load_params` (params
only); `config.task` names the data (research/tasks/task.py). The step is the one train step
of research/steps.py and the loop pretraining's (loop.py): one jitted step with shardings and
donation, Orbax checkpoints holding params, optimizer, PRNG and the input iterator (so a
killed run resumes exactly), metrics.jsonl through the Reporter.

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
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from research import (checkpointing, flops, generate, loading, loop, models, optim, reporting,
                      sharding, state as state_lib, steps)
from research import atomic_file  # predictions: whole or not at all
from research.data import tokenizer as tokenizer_lib
from research.models import task_model
from research.models.config import ModelConfig
from research.objectives.clm import CausalLM
from research.objectives.prefix_lm import PrefixLM
from research.objectives.seq2seq import Seq2SeqLM, start_id
from research.objectives.unilm import MaskedSeq2Seq
from research.tasks import encoding, features, losses, seq2seq
from research.tasks.task import Task, load_task

PRETRAINED_FILE = 'pretrained.json'
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
# Input style of head tasks per arch: BERT's [CLS] A [SEP] B [SEP], GPT-1's start A delim B
# extract; BART classifies "[CLS] A [SEP] B [SEP]" read by encoder and decoder alike.
DEFAULT_STYLES = {'encoder': 'bert', 'decoder': 'gpt', 'encoder_decoder': 'bert'}


@dataclasses.dataclass
class FineTune:
  """What a fine-tuning config resolves to before any step runs (shared by train and eval)."""
  config: ml_collections.ConfigDict  # resolved: train.steps and warmup follow the data
  workdir: str
  mesh: Any
  task: Task
  tokenizer: Any
  model_cfg: ModelConfig
  # How examples become arrays: encoding.InputStyle (head tasks) or seq2seq.Seq2SeqStyle.
  style: Any
  # Text-to-text: the model writes text (seq2seq tasks, or classification cast as text with
  # these label words); else a task head reads the backbone's states.
  generates: bool
  label_words: tuple[str, ...]
  model: Any  # task_model.TaskModel, or models.build(model_cfg) when `generates`
  objective: Any  # losses.TaskObjective, or the pretraining LM objective when `generates`
  splits: dict[str, features.EncodedSplit]
  tx: Any
  abstract_state: state_lib.TrainState
  init_state: Any  # () -> TrainState (random weights everywhere)
  corrupt: Any = None  # (row, rng) -> row: per-epoch noise of training rows, or None


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
    path = config.data.tokenizer.path or os.path.join(workdir, 'tokenizer.model')
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


def build(config: ml_collections.ConfigDict, workdir: str,
          need_params: bool = False) -> tuple[FineTune, Any]:
  """Reads and encodes the task, resolves the model and plans the sharded state; with
  `need_params` (a run without a checkpoint yet) also loads init_from's weights
  (loading.Loaded, else None)."""
  mesh = sharding.make_mesh(config.mesh)
  task = load_task(config.task)
  if task.dropped.total and jax.process_index() == 0:  # once per run (readers.DroppedRows)
    logging.warning('%s', task.dropped.message())
  model_cfg, tok, loaded = _architecture(config, workdir, task, mesh, need_params)
  model_cfg.check_length(config.data.max_seq_len)
  ft_cfg = config.finetune
  text_to_text = ft_cfg.text_to_text and task.type == 'classification'
  generates = task.type == 'seq2seq' or text_to_text
  label_words = ()
  if text_to_text:
    label_words = _split(ft_cfg.label_words) or task.labels
    if len(label_words) != len(task.labels):
      raise ValueError(f'--config.finetune.label_words has {len(label_words)} words for '
                       f'{len(task.labels)} classes {task.labels}; give one word per class')
    names = _split(config.task.text_columns)
    task = dataclasses.replace(task, splits={
        name: seq2seq.as_text_to_text(examples, label_words, task.labels, names)
        for name, examples in task.splits.items()})
  corrupt = None
  if generates:
    style = seq2seq.Seq2SeqStyle.create(model_cfg, tok, ft_cfg.bidirectional_prompt)
    target_len = seq2seq.target_length(style, config.data.max_seq_len,
                                       config.task.max_target_len)
    if model_cfg.arch == 'encoder_decoder':
      model_cfg.check_length(target_len, 'target')
    seq2seq.check_label_words(label_words, tok, style, target_len)
    splits = {name: features.encode_seq2seq_split(examples, tok, style,
                                                  config.data.max_seq_len, target_len)
              for name, examples in task.splits.items()}
    model = models.build(model_cfg)
    objective = {'encoder_decoder': Seq2SeqLM(),
                 'decoder': (PrefixLM if ft_cfg.bidirectional_prompt else CausalLM)(
                     max_predictions=target_len),
                 'encoder': MaskedSeq2Seq(max_predictions=config.data.max_seq_len),
                 }[model_cfg.arch]
    if model_cfg.arch == 'encoder':  # UniLM: masked targets, redrawn each epoch in training
      corrupt = seq2seq.target_masking(style, ft_cfg.seq2seq_mask_prob)
      splits = {name: _masked_once(split, corrupt, config.train.seed) if name != 'train'
                else split for name, split in splits.items()}
  else:
    style_name = ft_cfg.input_style
    style = encoding.InputStyle.create(
        DEFAULT_STYLES[model_cfg.arch] if style_name == 'auto' else style_name, tok)
    splits = {name: features.encode_split(task, examples, tok, style, config.data.max_seq_len,
                                          config.task)
              for name, examples in task.splits.items()}
    model = task_model.TaskModel(model_cfg, task.type, task.num_outputs,
                                 bilstm_size=ft_cfg.bilstm_size,
                                 decoder_start_id=start_id(tok, model_cfg.decoder_start))
    objective = losses.TaskObjective(task.type, ft_cfg.lm_loss_weight
                                     if model_cfg.arch == 'decoder' else 0.0)
  config = _resolve(config, splits['train'].num_features)
  tx = optim.make_optimizer(config.optim, config.train.steps)
  train_ids = splits['train'].arrays['input_ids']
  if generates:
    init_params = functools.partial(models.init_params, model, length=config.data.max_seq_len)
  else:
    num_views = train_ids.shape[1] if train_ids.ndim == 3 else 1
    init_params = functools.partial(task_model.init_params, model, config.data.max_seq_len,
                                    num_views)
  abstract, init = state_lib.sharded_init(init_params, tx, config.train.seed, mesh)
  return FineTune(config, workdir, mesh, task, tok, model_cfg, style, generates, label_words,
                  model, objective, splits, tx, abstract, init, corrupt), loaded


def _masked_once(split, corrupt, seed: int):
  """An evaluation split with its noise drawn once, per example, from (seed, index)."""
  rows = [corrupt({k: v[i] for k, v in split.arrays.items()}, np.random.default_rng([seed, i]))
          for i in range(split.num_features)]
  arrays = {k: np.stack([r[k] for r in rows]) for k in split.arrays}
  return dataclasses.replace(split, arrays=arrays)


def _split(value: str) -> tuple[str, ...]:
  return tuple(v.strip() for v in value.split(',') if v.strip())


def _load_pretrained(ft: FineTune, state: state_lib.TrainState, loaded) -> state_lib.TrainState:
  """Replaces the fresh weights of the pretrained part (all of them for a text-writing model,
  the backbone under a task head) by the loaded ones, checked leaf by leaf. Adam's moments
  start at zero either way, so only params change."""
  if ft.generates:
    key, target, source = None, ft.abstract_state.params, loaded.params
  else:
    key = task_model.BACKBONES[ft.model_cfg.arch]
    target = ft.abstract_state.params[key]
    source = task_model.pretrained_backbone(loaded.cfg, loaded.params)
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
  config = ft.config
  batch_size = config.train.eval_batch_size
  if batch_size % ft.mesh.devices.size:
    raise ValueError(f'--config.train.eval_batch_size={batch_size} must be divisible by the '
                     f'{ft.mesh.devices.size} devices')
  shardings = state_lib.shardings_of(ft.abstract_state)
  replicated = NamedSharding(ft.mesh, P())
  # Outputs are gathered onto every device so each process can read all predictions.
  step_fn = steps.eval_step if ft.generates else losses.eval_step
  eval_step = jax.jit(functools.partial(step_fn, model=ft.model, objective=ft.objective),
                      in_shardings=(shardings.params, sharding.batch_sharding(ft.mesh)),
                      out_shardings=replicated)

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
      out = jax.device_get(eval_step(params, batch))
      terms, out = (out, None) if ft.generates else out
      totals = terms if totals is None else jax.tree.map(np.add, totals, terms)
      if out is not None:
        outputs.append({k: v[:batch_size - pad] for k, v in out.items()})
    if ft.generates:
      predictions = _decode(ft, params, split)
    else:
      outputs = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
      predictions = features.to_predictions(ft.task, split, outputs, config.task)
    metrics = {}
    if split.labelled:
      means = {k: float(v[0] / max(v[1], 1e-9)) for k, v in totals.items()}
      if ft.generates:  # teacher-forced loss of the target tokens (all, or the masked ones)
        means = ft.objective.summarize(means)
        means['perplexity'] = float(np.exp(means['loss']))
      # Token accuracies are the objective's; the task's own metrics follow.
      metrics = {k: float(v) for k, v in means.items() if not k.endswith('accuracy')}
      metrics.update(ft.task.score(split.examples, predictions))
    return metrics, predictions

  return evaluate


def _decode(ft: FineTune, params, split) -> list:
  """The model's output text for each example (greedy or beam search), or for text-to-text
  classification the class index whose word it wrote (-1: none)."""
  config, tok = ft.config, ft.tokenizer
  budget = (split.arrays['targets'].shape[1] if ft.model_cfg.arch == 'encoder_decoder'
            else seq2seq.target_length(ft.style, config.data.max_seq_len,
                                       config.task.max_target_len))
  texts = []
  for start in range(0, len(split.prompts), config.train.eval_batch_size):
    new = generate.generate(ft.model, params,
                            split.prompts[start:start + config.train.eval_batch_size],
                            max_new_tokens=budget, eos_id=ft.style.end_id, pad_id=tok.pad_id,
                            start_id=ft.style.start_id, num_beams=config.finetune.num_beams,
                            bidirectional_prompt=ft.style.bidirectional_prompt)
    texts += [tok.decode(ids) for ids in new]
  if ft.label_words:
    return [seq2seq.label_of(t, ft.label_words) for t in texts]
  return texts


def _write_predictions(ft: FineTune, split_name: str, predictions: list):
  if jax.process_index() != 0:
    return
  directory = os.path.join(ft.workdir, 'predictions')
  os.makedirs(directory, exist_ok=True)
  rows = features.prediction_rows(ft.task, ft.splits[split_name], predictions)
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
  if ft.corrupt is not None:  # drawn before sharding: keyed by the global stream position
    ds = ds.random_map(ft.corrupt)
  ds = ds[jax.process_index()::jax.process_count()]
  ds = ds.batch(ft.config.train.batch_size // jax.process_count(), drop_remainder=True)
  return ds.to_iter_dataset(_READ_OPTIONS)


def _flops_per_step(ft: FineTune) -> float:
  """Model FLOPs of one step: task models read each view (pair order, choice) of an example;
  encoder-decoders read a head task's input with both stacks; the LM head counts when its
  logits are trained (seq2seq, or a decoder's auxiliary LM loss)."""
  cfg, arrays = ft.model_cfg, ft.splits['train'].arrays
  views = int(np.prod(arrays['input_ids'].shape[1:-1]))  # 1, or pair orders / choices
  length = arrays['input_ids'].shape[-1]
  if ft.generates:
    target = arrays['targets'].shape[-1] if cfg.arch == 'encoder_decoder' else 0
    per_example = flops.model_flops(cfg, length=length, target_length=target,
                                    vocab_positions=ft.objective.vocab_positions(length))
  else:
    lm = getattr(ft.objective, 'lm_loss_weight', 0) > 0
    per_example = views * flops.model_flops(
        cfg, length=length, target_length=length if cfg.arch == 'encoder_decoder' else 0,
        vocab_positions=length if lm else 0)
  return per_example * ft.config.train.batch_size


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
      state = _load_pretrained(ft, state, pretrained)
  else:
    state, data_state = ckpt.restore(ft.abstract_state)
    data_iter.set_state(data_state)
    logging.info('resumed fine-tuning from step %d of %s', state.step, workdir)

  train_step = loop.compile_step(
      functools.partial(steps.train_step, model=ft.model, objective=ft.objective, tx=ft.tx,
                        grad_accum_steps=config.train.grad_accum_steps),
      ft.abstract_state, ft.mesh)
  evaluate = make_eval_fn(ft)
  arrays = ft.splits['train'].arrays
  tokens = int(np.prod(arrays['input_ids'].shape[1:]))
  if 'decoder_input_ids' in arrays:  # encoder-decoders count source and target tokens
    tokens += arrays['decoder_input_ids'].shape[1]
  reporter = reporting.Reporter(
      workdir, total_steps=config.train.steps, log_every=config.train.log_every,
      flops_per_step=_flops_per_step(ft), peak_flops=flops.peak_flops(ft.model_cfg.dtype),
      tokens_per_step=config.train.batch_size * tokens,
      num_devices=ft.mesh.devices.size, start_step=int(state.step), is_chief=is_chief)
  start = int(state.step)
  if start == 0:
    baseline = features.majority_baseline(ft.task, ft.task.splits['train'],
                                          ft.task.splits['dev'])
    reporter.log_event(0, event='start', task=ft.task.name, task_type=ft.task.type,
                       arch=ft.model_cfg.arch, init_from=config.finetune.init_from,
                       params=state_lib.param_count(state.params),
                       train_examples=len(ft.task.splits['train']),
                       **ft.task.dropped.log_fields(),
                       **(ft.task.dev_split.log_fields() if ft.task.dev_split else {}),
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
  params = ckpt.restore_params(ft.abstract_state.params, step)
  ckpt.close()
  reporter = reporting.Reporter(workdir, total_steps=step, log_every=1, flops_per_step=None,
                                peak_flops=None, tokens_per_step=0,
                                is_chief=jax.process_index() == 0)
  results = _final_eval(ft, make_eval_fn(ft), params, reporter, step)
  reporter.close()
  return results
