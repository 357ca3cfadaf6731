"""Cross-entropy over the vocabulary without materialising the [batch, length, vocab] logits.

The LM head's projection and the softmax cross-entropy are computed together, a chunk of
positions at a time, as Liger Kernel's fused linear cross-entropy (Hsu et al. 2024) and Cut
Cross-Entropy (Wijmans et al. 2024) do: each chunk's logits live only while that chunk is
scored. The gradient is taken in the same pass (d logits = softmax - one_hot, Eq. 1 below),
so the backward pass is two scalings and no logits are recomputed or stored:

  loss     = sum_t w_t (logsumexp(z_t) - z_t[y_t]),   z_t = h_t W^T   (W: [vocab, d_model])
  d loss / d z_t = w_t (softmax(z_t) - one_hot(y_t))                                  (1)
  d h_t = (d loss / d z_t) W,   d W = sum_t (d loss / d z_t)^T h_t

That needs the loss to be used as a sum: the cotangent must be one scalar, which is how every
objective here uses it (a term's total times 1 / its batch weight, objectives/base.py). The
per-position cross-entropy and correctness come back for metrics, without gradient.

Written here because optax has only the logits-in version (softmax_cross_entropy_with_integer
_labels); on a 2-core CPU the logits of GPT-tiny's step (32 x 128 x 8k floats, 131 MB) make
the softmax's elementwise passes memory-bound, and a chunk that stays in cache is faster.
"""
from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

from research import sharding

# Logits values scored at once (a [batch, chunk, vocab] block, 16 MB in float32) ...
CHUNK_LOGITS = 2**22
# ... unless that leaves fewer rows (batch x chunk) than this: every chunk re-reads the
# [vocab, d_model] kernel and adds to its float32 gradient, and XLA:CPU's matmuls with few
# rows run far below peak (the step times behind 256: docs/performance.md).
MIN_CHUNK_ROWS = 256


@flax.struct.dataclass
class VocabLoss:
  total: jax.Array  # float32 []: sum of weight x cross-entropy; the only output with a gradient
  cross_entropy: jax.Array  # float32 [batch, length]
  correct: jax.Array  # float32 [batch, length]: 1 where the target's logit is the largest


def chunk_length(batch: int, length: int, vocab: int, chunk_logits: int,
                 min_rows: int) -> int:
  """Positions per row scored at once: the largest power of two whose [batch, chunk, vocab]
  logits hold at most `chunk_logits` values, raised to the smallest power of two that gives
  `min_rows` rows (batch x chunk), at most `length`'s power of two."""
  within_budget = max(1, chunk_logits // (batch * vocab))
  chunk = max(1 << (within_budget.bit_length() - 1), 1 << (-(-min_rows // batch) - 1).bit_length())
  return min(chunk, 1 << (length - 1).bit_length())


def vocab_cross_entropy(hidden: jax.Array, kernel: jax.Array, targets: jax.Array,
                        weights: jax.Array, *, chunk_logits: int = CHUNK_LOGITS,
                        min_rows: int = MIN_CHUNK_ROWS) -> VocabLoss:
  """hidden [batch, length, d_model] (the head's input), kernel [vocab, d_model] (the tied
  embedding table or an output kernel, transposed), targets int [batch, length], weights
  [batch, length] -> VocabLoss. Positions are scored `chunk_length` at a time."""
  batch, length, _ = hidden.shape
  chunk = chunk_length(batch, length, kernel.shape[0], chunk_logits, min_rows)
  pad = -length % chunk
  if pad:  # zero-weight positions make the length a multiple of the chunk
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets, weights = (jnp.pad(x, ((0, 0), (0, pad))) for x in (targets, weights))
  out = _loss(hidden, kernel.astype(hidden.dtype), targets, weights.astype(jnp.float32), chunk)
  # The metrics carry no gradient (_loss_bwd ignores their cotangents; this makes it so).
  metric = lambda x: jax.lax.stop_gradient(x[:, :length])
  return VocabLoss(total=out.total, cross_entropy=metric(out.cross_entropy),
                   correct=metric(out.correct))


def _chunks(x: jax.Array, chunk: int) -> jax.Array:
  """[batch, length, ...] -> [length / chunk, batch, chunk, ...] (the scan's leading axis)."""
  return x.reshape(x.shape[0], -1, chunk, *x.shape[2:]).swapaxes(0, 1)


def _unchunk(x: jax.Array) -> jax.Array:
  """[length / chunk, batch, chunk, ...] -> [batch, length, ...]."""
  x = x.swapaxes(0, 1)
  return x.reshape(x.shape[0], -1, *x.shape[3:])


def _score(h, kernel, targets, weights, with_grad: bool):
  """One chunk: h [batch, chunk, d], targets / weights [batch, chunk] -> (cross-entropy,
  correct, d loss / d logits or None)."""
  logits = jnp.einsum('bcd,vd->bcv', h, kernel)  # [batch, chunk, vocab]
  logits = sharding.constrain_activation(logits, ('batch', 'length', 'vocab')).astype(
      jnp.float32)
  top = jnp.max(logits, -1, keepdims=True)  # [batch, chunk, 1]
  exp = jnp.exp(logits - top)
  total = jnp.sum(exp, -1, keepdims=True)
  target_logit = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
  cross_entropy = top[..., 0] + jnp.log(total[..., 0]) - target_logit
  correct = (target_logit >= top[..., 0]).astype(jnp.float32)
  if not with_grad:
    return cross_entropy, correct, None
  one_hot = jax.nn.one_hot(targets, kernel.shape[0], dtype=jnp.float32)
  dlogits = ((exp / total - one_hot) * weights[..., None]).astype(h.dtype)  # Eq. 1
  return cross_entropy, correct, dlogits


def _scan(hidden, kernel, targets, weights, chunk: int, with_grad: bool):
  """Scores every chunk; with_grad also returns (d loss / d hidden, d loss / d kernel).

  The kernel's gradient is summed as [d_model, vocab] (h^T dlogits) and transposed once at
  the end: summed as [vocab, d_model] (dlogits^T h), XLA:CPU writes every chunk's dlogits
  transposed for the matmul, and steps took longer (docs/performance.md). The first chunk
  starts the sum rather than a zeroed [d_model, vocab] array, which would be written each
  step for nothing."""
  def body(dkernel, xs):
    h, t, w = xs
    cross_entropy, correct, dlogits = _score(h, kernel, t, w, with_grad)
    if not with_grad:
      return dkernel, (cross_entropy, correct)
    update = jnp.einsum('bcd,bcv->dv', h, dlogits).astype(jnp.float32)  # [d_model, vocab]
    dkernel = update if dkernel is None else dkernel + update
    return dkernel, (cross_entropy, correct, jnp.einsum('bcv,vd->bcd', dlogits, kernel))

  xs = tuple(_chunks(x, chunk) for x in (hidden, targets, weights))
  if with_grad:  # the first chunk outside the scan: its update starts the sum
    dkernel, first = body(None, tuple(x[0] for x in xs))
    dkernel, rest = jax.lax.scan(body, dkernel, tuple(x[1:] for x in xs))
    outs = tuple(jnp.concatenate([a[None], b]) for a, b in zip(first, rest))
  else:
    dkernel, outs = jax.lax.scan(body, None, xs)
  outs = tuple(_unchunk(x) for x in outs)
  loss = VocabLoss(total=jnp.sum(outs[0] * weights), cross_entropy=outs[0], correct=outs[1])
  return loss, (outs[2] if with_grad else None, dkernel.T if with_grad else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _loss(hidden, kernel, targets, weights, chunk):
  return _scan(hidden, kernel, targets, weights, chunk, with_grad=False)[0]


def _loss_fwd(hidden, kernel, targets, weights, chunk):
  loss, (dhidden, dkernel) = _scan(hidden, kernel, targets, weights, chunk, with_grad=True)
  return loss, (dhidden, dkernel.astype(kernel.dtype), targets, weights)


def _loss_bwd(chunk, residuals, cotangent: VocabLoss):
  """Only `total` carries a gradient (cross_entropy and correct are metrics)."""
  del chunk
  dhidden, dkernel, targets, weights = residuals
  scale = cotangent.total
  return (scale.astype(dhidden.dtype) * dhidden, scale.astype(dkernel.dtype) * dkernel,
          None, jnp.zeros_like(weights))


_loss.defvjp(_loss_fwd, _loss_bwd)
