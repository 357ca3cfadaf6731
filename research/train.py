"""Pretraining: build or restore, then the step loop (loop.py), evaluation and `--mode=eval`.

Everything stateful a resumed run needs is in the checkpoint: params, optimizer state, step,
the dropout PRNG key (state.py) and the input iterator's position (data/pipeline.py). A run
killed at any moment restarts from its last complete checkpoint and then follows exactly the
trajectory the uninterrupted run would have (tests/test_train.py checks the losses match).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import ml_collections

from research import (checkpointing, flops, loading, loop, models, objectives, optim,
                      reporting, sharding, state as state_lib, steps)
from research.data import corpus, pipeline, tokenizer as tokenizer_lib
from research.models.config import ModelConfig


@dataclasses.dataclass
class Experiment:
  """What a config resolves to before any step runs (shared by train and eval)."""
  config: ml_collections.ConfigDict
  workdir: str
  mesh: Any
  tokenizer: tokenizer_lib.Tokenizer
  train_docs: list
  eval_docs: list
  objective: objectives.Objective
  model_cfg: ModelConfig
  model: Any
  tx: Any
  abstract_state: state_lib.TrainState
  init_state: Any  # () -> TrainState


def make_experiment(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
  """Resolves data, tokenizer, model, optimizer and the sharded state layout."""
  mesh = sharding.make_mesh(config.mesh)
  sized = ModelConfig.from_config(config.model, vocab_size=1)  # the vocabulary comes below
  objective = objectives.from_config(config.objective, sized)
  objective.check_arch(sized.arch)  # configuration errors surface before the tokenizer trains
  sized.check_length(config.data.max_seq_len)
  train_docs, eval_docs = corpus.load_corpora(config)
  tok = tokenizer_lib.load_or_train(
      loading.tokenizer_path(workdir, config.data.tokenizer.path),
      lambda: (line for doc in train_docs for line in doc),
      vocab_size=config.data.tokenizer.vocab_size,
      model_type=config.data.tokenizer.model_type,
      max_sentences=config.data.tokenizer.max_training_sentences)
  # T5's sentinels take ids above the tokenizer's pieces (objective.extra_ids).
  needed = tok.vocab_size + objective.extra_ids
  vocab_size = config.model.vocab_size or needed
  if vocab_size < needed:
    raise ValueError(f'--config.model.vocab_size={vocab_size} is smaller than the tokenizer\'s '
                     f'{tok.vocab_size} pieces + {objective.extra_ids} objective ids; set it to '
                     '0 to follow the tokenizer')
  model_cfg = sized.replace(vocab_size=vocab_size)
  _check_workdir_model(workdir, model_cfg)
  model = models.build(model_cfg)
  tx = optim.make_optimizer(config.optim, config.train.steps)
  init_params = functools.partial(models.init_params, model, length=config.data.max_seq_len)
  abstract, init = state_lib.sharded_init(init_params, tx, config.train.seed, mesh)
  return Experiment(config, workdir, mesh, tok, train_docs, eval_docs, objective, model_cfg,
                    model, tx, abstract, init)


def _check_workdir_model(workdir: str, cfg: ModelConfig):
  """A workdir that already holds another model (e.g. a GPT run given a T5 config) is an
  error before anything is written or restored."""
  if not os.path.exists(os.path.join(workdir, loading.MODEL_FILE)):
    return
  saved = loading.read_model_config(workdir)
  changed = [f'{k}={getattr(saved, k)!r} (config: {getattr(cfg, k)!r})'
             for k in ('arch', 'vocab_size', 'd_model', 'num_layers', 'num_decoder_layers',
                       'num_heads', 'd_ff', 'position', 'mlp', 'scan_layers')
             if getattr(saved, k) != getattr(cfg, k)]
  if changed:
    raise ValueError(f'{workdir} holds a model with {", ".join(changed[:3])}; use a fresh '
                     '--workdir or the config this workdir was trained with')


def make_eval_fn(exp: Experiment):
  """Returns evaluate(params) -> summarized held-out metrics (jitted once)."""
  config = exp.config
  if not config.train.eval_batches or not exp.eval_docs:
    return None
  sharding.check_batch('--config.train.eval_batch_size', config.train.eval_batch_size, exp.mesh)
  batches = pipeline.make_eval_batches(config, exp.objective, exp.tokenizer, exp.eval_docs,
                                       batch_size=config.train.eval_batch_size,
                                       max_batches=config.train.eval_batches)
  shardings = state_lib.shardings_of(exp.abstract_state)
  eval_step = jax.jit(functools.partial(steps.eval_step, model=exp.model,
                                        objective=exp.objective),
                      in_shardings=(shardings.params, sharding.batch_sharding(exp.mesh)))

  def evaluate(params) -> dict[str, float]:
    total = None
    for batch in batches:
      m, _ = eval_step(params, sharding.global_batch(sharding.process_rows(batch), exp.mesh))
      total = m if total is None else jax.tree.map(lambda a, b: a + b, total, m)
    return steps.summarize(jax.device_get(total), exp.objective)

  return evaluate


def flops_per_step(model_cfg: ModelConfig, objective: objectives.Objective, batch_size: int,
                   lengths: tuple[int, int]) -> float:
  """Model FLOPs of one training step (forward + backward) over the global batch."""
  length, target = lengths
  return batch_size * flops.model_flops(model_cfg, length=length, target_length=target,
                                        vocab_positions=objective.vocab_positions(length))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains to config.train.steps (resuming if workdir holds a checkpoint); returns final eval."""
  os.makedirs(workdir, exist_ok=True)
  exp = make_experiment(config, workdir)
  is_chief = jax.process_index() == 0
  if is_chief:
    reporting.write_run_info(workdir, config)
  loading.write_model_config(workdir, exp.model_cfg)
  sharding.check_batch('--config.train.batch_size', config.train.batch_size, exp.mesh,
                       config.train.grad_accum_steps)

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=config.checkpoint.keep)
  dataset = pipeline.make_train_dataset(
      config, exp.objective, exp.tokenizer, exp.train_docs,
      batch_size=config.train.batch_size // jax.process_count(),
      shard_index=jax.process_index(), shard_count=jax.process_count())
  lengths = flops.example_lengths(next(iter(dataset)))
  data_iter = iter(dataset)
  state = loop.init_or_resume(ckpt, exp.abstract_state, exp.init_state, data_iter, workdir)

  train_step = loop.compile_step(
      functools.partial(steps.train_step, model=exp.model, objective=exp.objective, tx=exp.tx,
                        grad_accum_steps=config.train.grad_accum_steps,
                        schedule=optim.make_schedule(config.optim, config.train.steps)),
      exp.abstract_state, exp.mesh)
  evaluate = make_eval_fn(exp)

  start = int(state.step)
  reporter = reporting.Reporter(
      workdir, total_steps=config.train.steps, log_every=config.train.log_every,
      flops_per_step=flops_per_step(exp.model_cfg, exp.objective, config.train.batch_size,
                                    lengths),
      peak_flops=flops.peak_flops(exp.model_cfg.dtype),
      # Encoder-decoders count source and target tokens.
      tokens_per_step=config.train.batch_size * sum(lengths), start_step=start,
      is_chief=is_chief)
  if start == 0:
    baseline = pipeline.unigram_baseline(exp.tokenizer, exp.train_docs, exp.eval_docs)
    reporter.log_event(0, event='start', params=models.param_count(state.params),
                       **{f'baseline/{k}': v for k, v in baseline.items()})
  else:
    reporter.log_event(start, event='resumed')

  def after_step(done: int, state) -> dict | None:
    if evaluate and (done % config.train.eval_every == 0 or done == config.train.steps):
      metrics = evaluate(state.params)
      reporter.eval(done, metrics)
      return metrics
    return None

  state, eval_metrics = loop.run(
      state, train_step, data_iter, exp.mesh, total_steps=config.train.steps, reporter=reporter,
      ckpt=ckpt, checkpoint_every=config.checkpoint.every, after_step=after_step,
      max_skipped_steps=config.train.max_skipped_steps)
  ckpt.close()
  reporter.close()
  if not eval_metrics and evaluate:  # already at the final step when started
    eval_metrics = evaluate(state.params)
  return eval_metrics


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """`--mode=eval`: held-out metrics of the workdir's latest checkpoint, appended to metrics.jsonl."""
  exp = make_experiment(config, workdir)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=config.checkpoint.keep)
  step = ckpt.latest_step()
  if step is None:
    raise checkpointing.CheckpointError(f'no checkpoint in {workdir}/checkpoints; train first '
                                        'or point --workdir at a trained run')
  params = ckpt.restore_params(exp.abstract_state.params, step)
  evaluate = make_eval_fn(exp)
  if evaluate is None:
    raise ValueError('nothing to evaluate: set --config.train.eval_batches > 0 and a corpus '
                     'with held-out documents')
  metrics = evaluate(params)
  reporter = reporting.Reporter(workdir, total_steps=step, log_every=1, flops_per_step=None,
                                peak_flops=None, tokens_per_step=0,
                                is_chief=jax.process_index() == 0)
  reporter.eval(step, metrics)
  reporter.close()
  ckpt.close()
  return metrics
