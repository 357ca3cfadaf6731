"""The peers the benchmarks compare against: HF Flax 4.57 and PyTorch 2.13 at our shapes.

Only `--peers` of train_throughput.py and generation.py imports this module; it imports
transformers and torch lazily (pip install -e '.[bench]' into its own venv with
constraints-bench.txt, or `make bench-peers`). Each peer is built from our own ModelConfig, so
layers, width, heads, d_ff, vocabulary, positions, activations, norms, tying and dropout (0.1
for all) are the same; `hf_config` is the one place that maps our switches to HF's.

Training steps are the idiomatic ones of each framework, timed by the caller's loop:
  - HF Flax: `jax.jit(value_and_grad + optax, donate_argnums=0)` over the HF model's
    `__call__(..., params=, dropout_rng=, train=True)`, with the very optimizer we train with
    (research/optim.py: global-norm clipping + AdamW, same schedule and decay mask);
  - PyTorch: forward, backward, clip_grad_norm_, AdamW.step, scheduler.step (eager, fp32,
    `torch.set_num_threads` one per core unless --torch_threads says otherwise).
The loss of each is the same weighted cross-entropy over the same synthetic batch. One
difference is real and kept: HF's BERT pretraining head projects every position onto the
vocabulary, ours only the 20 predicted ones (as google-research/bert), so the peer does more
FLOPs per token (the caller prints both counts).

Workaround for transformers 4.57.6 on jax 0.10: FlaxT5's relative-position bucketing calls
`jnp.clip(x, a_max=...)`, a keyword jax removed (0.4.27 deprecated it; min/max replace it).
`_patch_flax_t5` gives that one HF module a jnp whose `clip` accepts the old keywords;
nothing else (ours included) sees it.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import flags

from research import optim
from research.models.config import ModelConfig

# The comparison's flags, shared by train_throughput.py and generation.py.
PEERS = flags.DEFINE_bool('peers', False, 'Also time HF Flax and PyTorch at the same shapes '
                          "(pip install -c constraints-bench.txt -e '.[bench]').")
ROUNDS = flags.DEFINE_integer('rounds', 1, 'Times the table is measured (the spread between '
                              'rounds is the noise).')
_TORCH_THREADS = flags.DEFINE_integer(
    'torch_threads', 0, 'PyTorch intra-op threads (0: one per core). On a machine shared with '
    'other jobs, fewer may be faster: OpenMP threads wait for each other when descheduled.')

# transformers class names per family (PyTorch; HF Flax adds the 'Flax' prefix).
CLASSES = {
    'bert': ('BertConfig', 'BertForPreTraining'),
    'gpt': ('GPT2Config', 'GPT2LMHeadModel'),
    't5': ('T5Config', 'T5ForConditionalGeneration'),
    'bart': ('BartConfig', 'BartForConditionalGeneration'),
}


@dataclasses.dataclass
class Runner:
  """One framework's train step, ready to time: `block(step(i))` runs update i to completion."""
  step: Callable[[int], Any]
  block: Callable[[Any], Any]
  num_params: int


def check_installed() -> None:
  """Exits with one line naming the fix when transformers or torch is missing."""
  for name in ('transformers', 'torch'):
    try:
      importlib.import_module(name)
    except ImportError:
      raise SystemExit(f'error: --peers needs {name}: pip install -c constraints-bench.txt '
                       "-e '.[bench]' in a separate venv, or `make bench-peers`") from None


def _transformers():
  import transformers  # pylint: disable=g-import-not-at-top (optional, benchmark only)
  return transformers


def _torch():
  import torch  # pylint: disable=g-import-not-at-top (optional, benchmark only)
  torch.set_num_threads(torch_threads())
  return torch


def torch_threads() -> int:
  return _TORCH_THREADS.value or os.cpu_count()


class _NumpyWithOldClip(types.ModuleType):
  """jax.numpy, except that `clip` also takes the a_min/a_max keywords jax 0.10 removed."""

  def __getattr__(self, name):
    return getattr(jnp, name)

  @staticmethod
  def clip(x, a_min=None, a_max=None):
    return jnp.clip(x, min=a_min, max=a_max)


def _patch_flax_t5() -> None:
  from transformers.models.t5 import modeling_flax_t5  # pylint: disable=g-import-not-at-top
  modeling_flax_t5.jnp = _NumpyWithOldClip('jnp')


def hf_config(family: str, cfg: ModelConfig):
  """The transformers config of the same network as our `cfg` (same for Flax and PyTorch)."""
  t = _transformers()
  if family == 'bert':
    return t.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.d_ff, hidden_act='gelu',
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
        max_position_embeddings=cfg.max_len, type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps, initializer_range=cfg.init_std)
  if family == 'gpt':
    # eos None: a random model's greedy output must not stop `generate` early.
    return t.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_len, n_embd=cfg.d_model,
        n_layer=cfg.num_layers, n_head=cfg.num_heads, n_inner=cfg.d_ff,
        activation_function='gelu_new', resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.attention_dropout, layer_norm_epsilon=cfg.layer_norm_eps,
        initializer_range=cfg.init_std, bos_token_id=None, eos_token_id=None, pad_token_id=0)
  if family == 't5':
    return t.T5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.head_dim, d_ff=cfg.d_ff,
        num_layers=cfg.num_layers, num_decoder_layers=cfg.decoder_layers,
        num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.relative_buckets,
        relative_attention_max_distance=cfg.relative_max_distance, dropout_rate=cfg.dropout,
        layer_norm_epsilon=cfg.layer_norm_eps, feed_forward_proj=cfg.activation,
        tie_word_embeddings=cfg.tie_output, pad_token_id=0, decoder_start_token_id=0)
  if family == 'bart':
    return t.BartConfig(
        vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_len, d_model=cfg.d_model,
        encoder_layers=cfg.num_layers, decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.num_heads, decoder_attention_heads=cfg.num_heads,
        encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff, activation_function='gelu',
        dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, activation_dropout=0.0,
        init_std=cfg.init_std, scale_embedding=False, tie_word_embeddings=cfg.tie_output)
  raise ValueError(f'no peer for family {family!r}; choose one of {", ".join(CLASSES)}')


def flax_model_class(family: str):
  """The HF Flax class of a family (FlaxT5 patched to run on jax 0.10, see above)."""
  if family == 't5':
    _patch_flax_t5()
  return getattr(_transformers(), 'Flax' + CLASSES[family][1])


def _flax_model(family: str, cfg: ModelConfig, input_shape: tuple[int, int]):
  """(HF Flax model without params, its params initialised by one jitted call)."""
  model = flax_model_class(family)(hf_config(family, cfg), _do_init=False)
  init = jax.jit(model.init_weights, static_argnums=1)
  import flax  # pylint: disable=g-import-not-at-top
  params = flax.core.unfreeze(init(jax.random.PRNGKey(0), input_shape))
  return model, params


def _weighted_ce(logits, targets, weights):
  """sum(w * CE) / sum(w) over [batch, length] (the same loss our objectives average)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return (ce * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def _flax_loss(family: str, model, params, batch, rng):
  if family == 'bert':
    out = model(batch['input_ids'], attention_mask=batch['attention_mask'],
                token_type_ids=batch['segment_ids'], params=params, dropout_rng=rng, train=True)
    mlm = _weighted_ce(out.prediction_logits, batch['mlm_targets'], batch['mlm_weights'])
    nsp = optax.softmax_cross_entropy_with_integer_labels(
        out.seq_relationship_logits, batch['nsp_labels']).mean()
    return mlm + nsp
  if family == 'gpt':
    out = model(batch['input_ids'], params=params, dropout_rng=rng, train=True)
  else:
    out = model(batch['input_ids'], attention_mask=batch['attention_mask'],
                decoder_input_ids=batch['decoder_input_ids'],
                decoder_attention_mask=batch['decoder_mask'], params=params, dropout_rng=rng,
                train=True)
  return _weighted_ce(out.logits, batch['targets'], batch['weights'])


def flax_train_step(family: str, cfg: ModelConfig, optim_cfg: ml_collections.ConfigDict,
                    total_steps: int, host_batches: Sequence[dict[str, np.ndarray]]) -> Runner:
  """HF Flax's model in the idiomatic jitted step: value_and_grad + optax, state donated."""
  model, params = _flax_model(family, cfg, host_batches[0]['input_ids'].shape)
  tx = optim.make_optimizer(optim_cfg, total_steps)
  key = jax.random.PRNGKey(0)

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state, batch):
    params, opt_state, step = state
    rng = jax.random.fold_in(key, step)
    loss, grads = jax.value_and_grad(
        lambda p: _flax_loss(family, model, p, batch, rng))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, step + 1), loss

  batches = [jax.device_put(b) for b in host_batches]
  state = (params, tx.init(params), jnp.zeros((), jnp.int32))

  def step(i):
    nonlocal state
    state, loss = train_step(state, batches[i % len(batches)])
    return loss

  num_params = sum(x.size for x in jax.tree.leaves(params))
  return Runner(step, jax.block_until_ready, num_params)


def torch_train_step(family: str, cfg: ModelConfig, optim_cfg: ml_collections.ConfigDict,
                     total_steps: int, host_batches: Sequence[dict[str, np.ndarray]]) -> Runner:
  """The PyTorch model in eager mode: forward, backward, clip, AdamW step, schedule step."""
  torch, t = _torch(), _transformers()
  functional = torch.nn.functional
  torch.manual_seed(0)
  model = getattr(t, CLASSES[family][1])(hf_config(family, cfg)).train()
  params = list(model.parameters())
  # The decay rule of research/optim.py: matrices decay; biases and norm gains (1-D) do not.
  groups = [{'params': [p for p in params if p.ndim >= 2], 'weight_decay': optim_cfg.weight_decay},
            {'params': [p for p in params if p.ndim < 2], 'weight_decay': 0.0}]
  opt = torch.optim.AdamW(groups, lr=optim_cfg.learning_rate, betas=(optim_cfg.b1, optim_cfg.b2),
                          eps=optim_cfg.eps)
  schedule = t.get_linear_schedule_with_warmup(opt, optim_cfg.warmup_steps, total_steps)
  batches = [{k: torch.from_numpy(v) for k, v in b.items()} for b in host_batches]

  def weighted_ce(logits, targets, weights):
    ce = functional.cross_entropy(logits.flatten(0, 1), targets.flatten().long(),
                                  reduction='none')
    return (ce * weights.flatten()).sum() / weights.sum().clamp(min=1.0)

  def loss_fn(b):
    if family == 'bert':
      out = model(b['input_ids'].long(), attention_mask=b['attention_mask'].long(),
                  token_type_ids=b['segment_ids'].long())
      return (weighted_ce(out.prediction_logits, b['mlm_targets'], b['mlm_weights'])
              + functional.cross_entropy(out.seq_relationship_logits, b['nsp_labels'].long()))
    if family == 'gpt':
      out = model(b['input_ids'].long())
    else:
      out = model(b['input_ids'].long(), attention_mask=b['attention_mask'].long(),
                  decoder_input_ids=b['decoder_input_ids'].long(),
                  decoder_attention_mask=b['decoder_mask'].long())
    return weighted_ce(out.logits, b['targets'], b['weights'])

  def step(i):
    loss = loss_fn(batches[i % len(batches)])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if optim_cfg.clip_norm > 0:
      torch.nn.utils.clip_grad_norm_(params, optim_cfg.clip_norm)
    opt.step()
    schedule.step()
    return loss

  return Runner(step, lambda loss: loss.item(), sum(p.numel() for p in params))


def flax_generate(cfg: ModelConfig, new_tokens: int) -> tuple[Callable[[np.ndarray], Any], int]:
  """HF Flax GPT-2 `generate` (greedy, KV cache), jitted whole as HF recommends on CPU/TPU.

  Returns (prompts [batch, prompt_len] -> tokens, number of parameters)."""
  model, params = _flax_model('gpt', cfg, (1, 8))
  # Flax's greedy loop needs an eos id: one past the vocabulary, which argmax never returns.
  run = jax.jit(lambda ids: model.generate(ids, params=params, max_new_tokens=new_tokens,
                                           do_sample=False, eos_token_id=cfg.vocab_size).sequences)
  return run, sum(x.size for x in jax.tree.leaves(params))


def torch_generate(cfg: ModelConfig, new_tokens: int) -> tuple[Callable[[np.ndarray], Any], int]:
  """PyTorch GPT-2 `generate` (greedy, KV cache) under inference_mode."""
  torch, t = _torch(), _transformers()
  torch.manual_seed(0)
  model = t.GPT2LMHeadModel(hf_config('gpt', cfg)).eval()

  def run(ids: np.ndarray) -> np.ndarray:
    ids = torch.from_numpy(np.asarray(ids, np.int64))
    with torch.inference_mode():
      out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                           max_new_tokens=new_tokens)
    return out.numpy()

  return run, sum(p.numel() for p in model.parameters())
