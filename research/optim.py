"""Optimizer: learning-rate schedule, global-norm clipping and AdamW.

The recipe is the one BERT (Devlin et al. 2019, Sec. A.2) and GPT-2 train
with: linear warmup to a peak learning rate, then decay; Adam with decoupled
weight decay (AdamW, Loshchilov & Hutter 2019); gradient clipping at global
norm 1.0. Everything is built from optax pieces.

Gradient accumulation is deliberately *not* done here with
`optax.MultiSteps`: the train step scans over micro-batches and sums their
gradients before a single `optimizer.update`, so one train step is exactly one
optimizer update and `step` counts updates everywhere (schedule, checkpoints,
logs).

Params may be `flax.linen.Partitioned` boxes (logical sharding metadata):
`init` may be called on boxed params (so the optimizer state inherits their
partitioning) and `update` on unboxed ones; the weight-decay mask gives the
same answer for both.
"""

import jax
import ml_collections
import optax

_SCHEDULES = ('linear', 'cosine', 'constant')

# Leaf names of parameters that are never weight-decayed. BERT's optimizer
# excludes "LayerNorm" and "bias" by name, GPT-2 (and nanoGPT) excludes every
# tensor with fewer than two dimensions; we apply both rules (see
# `weight_decay_mask`). 'scale' is the flax name of a LayerNorm/RMSNorm gain.
_NO_DECAY_NAMES = frozenset({'bias', 'scale'})


def make_schedule(
    optim_cfg: ml_collections.ConfigDict, total_steps: int
) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then decay until `total_steps`.

  After `warmup_steps` the rate follows `optim_cfg.schedule`:
    'linear':   linearly down to `end_lr_fraction * learning_rate` (BERT);
    'cosine':   half-cosine down to the same end value (GPT-3, Chinchilla);
    'constant': stays at `learning_rate`.
  Beyond `total_steps` the rate stays at its end value.

  Args:
    optim_cfg: `config.optim`.
    total_steps: number of optimizer updates in the run.

  Returns:
    A schedule mapping the update count (0-based) to a learning rate.
  """
  if optim_cfg.schedule not in _SCHEDULES:
    raise ValueError(
        f'config.optim.schedule={optim_cfg.schedule!r}; expected one of '
        f'{_SCHEDULES}.'
    )
  peak = optim_cfg.learning_rate
  end = optim_cfg.end_lr_fraction * peak
  warmup_steps = optim_cfg.warmup_steps
  decay_steps = max(total_steps - warmup_steps, 0)

  if optim_cfg.schedule == 'constant' or decay_steps == 0:
    decay = optax.constant_schedule(peak)
  elif optim_cfg.schedule == 'linear':
    decay = optax.linear_schedule(peak, end, decay_steps)
  else:
    decay = optax.cosine_decay_schedule(
        peak, decay_steps, alpha=optim_cfg.end_lr_fraction
    )
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([warmup, decay], boundaries=[warmup_steps])


def weight_decay_mask(params: optax.Params) -> optax.Params:
  """True for the parameters AdamW should decay: matrices, not biases/norms.

  A leaf is decayed iff it has at least two dimensions *and* its name is not
  'bias' or 'scale'. The name rule is needed because a scanned layer stack
  (`nn.scan` over layers) adds a leading layer axis, which turns LayerNorm
  scales and biases into 2-D arrays; the ndim rule catches 1-D parameters with
  other names. Embedding tables are decayed, as in BERT and GPT-2.

  Args:
    params: a parameter pytree, boxed or not (see the module docstring).

  Returns:
    A pytree of bools with the structure of `params`.
  """

  def decay(path, leaf) -> bool:
    # The name is the last dict key: a box adds an attribute key ('value').
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return leaf.ndim >= 2 and not (names and names[-1] in _NO_DECAY_NAMES)

  return jax.tree_util.tree_map_with_path(decay, params)


def make_optimizer(
    optim_cfg: ml_collections.ConfigDict, total_steps: int
) -> optax.GradientTransformation:
  """Global-norm clipping (if `clip_norm > 0`) followed by AdamW.

  optax's AdamW decays by `learning_rate * weight_decay * param`, i.e. the
  decay follows the schedule, as in Loshchilov & Hutter (2019, Alg. 2, with
  the schedule multiplier eta_t) and in PyTorch's AdamW. Unlike the original
  BERT optimizer, Adam's moment estimates are bias-corrected.

  Args:
    optim_cfg: `config.optim`.
    total_steps: number of optimizer updates in the run (for the schedule).

  Returns:
    The gradient transformation.
  """
  adamw = optax.adamw(
      learning_rate=make_schedule(optim_cfg, total_steps),
      b1=optim_cfg.b1,
      b2=optim_cfg.b2,
      eps=optim_cfg.eps,
      weight_decay=optim_cfg.weight_decay,
      mask=weight_decay_mask,
  )
  if optim_cfg.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim_cfg.clip_norm), adamw)
  return adamw
