"""What every training objective provides, pretraining and fine-tuning alike.

An objective is a frozen (hashable) dataclass: part of the jitted step's static arguments.
Host side (pretraining objectives): `examples` turns documents into unmasked examples, once
per run and deterministic, and `corruptor` returns the function that draws one example's
per-epoch noise with a numpy Generator (never jax ops in the input pipeline). Device side: `terms` returns metric pairs
`{name: [total, weight]}` that batches, micro-batches and devices combine by plain addition,
and `loss_scales` says how the terms make up the loss: each term's total is divided by its
weight over the *whole* batch (so gradient accumulation is exact, research/steps.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

Example = dict[str, np.ndarray]


def pair(total, weight) -> jax.Array:
  """A metric as [sum of values, sum of weights] (float32 [2])."""
  return jnp.stack([jnp.sum(total), jnp.sum(weight)]).astype(jnp.float32)


def cross_entropy(logits, targets) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def token_terms(prefix: str, logits, targets, weights) -> dict[str, jax.Array]:
  """Cross-entropy and accuracy summed over weighted positions.

  A prediction is correct when the target's logit is the largest (equal to the max), which is
  argmax == target except on exact ties. Not jnp.argmax: XLA:CPU lowers it to a scalar
  (value, index) reduction over the whole [batch, length, vocab] logits, a large share of a
  small model's step (docs/performance.md); the max is the one the softmax already takes.
  """
  correct = token_correct(logits, targets)
  return {f'{prefix}loss': pair(cross_entropy(logits, targets) * weights, weights),
          f'{prefix}accuracy': pair(correct * weights, weights)}


def vocab_terms(prefix: str, loss, weights) -> dict[str, jax.Array]:
  """token_terms from a models.vocab_loss.VocabLoss (the head scored the targets itself)."""
  return {f'{prefix}loss': pair(loss.total, weights),
          f'{prefix}accuracy': pair(loss.correct * weights, weights)}


def token_correct(logits, targets) -> jax.Array:
  """float32 [...]: 1 where the target's logit is the largest (token_terms' accuracy)."""
  target_logit = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
  return (target_logit >= logits.max(-1)).astype(jnp.float32)


def means(terms: dict[str, Any]) -> dict[str, Any]:
  """[total, weight] pairs -> weighted means."""
  return {k: v[0] / jnp.maximum(v[1], 1e-9) for k, v in terms.items()}


@dataclasses.dataclass(frozen=True)
class Objective:
  """Interface; subclasses (frozen dataclasses of their settings) override what applies."""
  name: ClassVar[str] = ''
  # The architectures (ModelConfig.arch) this objective can train.
  archs: ClassVar[tuple[str, ...]] = ()
  # Ids the model reserves above the tokenizer's vocabulary (T5's sentinels).
  extra_ids: ClassVar[int] = 0

  @property
  def loss_terms(self) -> tuple[tuple[str, str], ...]:
    """(term, whole-batch weight key) of each loss component."""
    return (('loss', 'weights'),)

  def check_arch(self, arch: str):
    if arch not in self.archs:
      raise ValueError(f'objective {self.name!r} trains {" or ".join(self.archs)} models, but '
                       f'--config.model.arch={arch!r}; use a matching config or objective')

  # --- host side ---
  def examples(self, tokenizer, documents_ids: Sequence[list[list[int]]], *, seq_len: int,
               seed: int) -> list[Example]:
    """Unmasked examples of `seq_len` tokens from tokenised documents (lists of lines of ids);
    deterministic given `seed`."""
    raise NotImplementedError

  def corruptor(self, tokenizer, *, seq_len: int
                ) -> Callable[[Example, np.random.Generator], Example] | None:
    """(example, rng) -> the example with this epoch's noise, or None for no noise. Built
    once per pipeline, so it may hold lookup tables of the tokenizer."""
    return None

  def vocab_positions(self, seq_len: int) -> int | None:
    """Positions per example projected onto the vocabulary (None: every target position)."""
    return None

  # --- device side ---
  def terms(self, model, params, batch: dict[str, jax.Array],
            rng: jax.Array | None) -> dict[str, jax.Array]:
    """Metric pairs of one (micro-)batch; `rng=None` means deterministic (eval)."""
    raise NotImplementedError

  def loss_scales(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """{loss term: its factor}: the loss is the sum of term total x factor, the factor being
    1 / (the term's weight over the whole batch)."""
    return {term: 1.0 / jnp.maximum(jnp.sum(batch[key]), 1.0) for term, key in self.loss_terms}

  def summarize(self, values: dict[str, Any]) -> dict[str, Any]:
    """Derived metrics from the means (e.g. perplexity); adds the total 'loss' if needed."""
    return values

  def evaluate(self, model, params, batch: dict[str, jax.Array]
               ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(metric pairs, per-row outputs) of a held-out batch: the one eval step
    (research/steps.py). Objectives that predict something per row (task heads) return it
    beside the terms, from the same forward pass; language models return no outputs."""
    return self.terms(model, params, batch, None), {}

  # --- fine-tuning on (source, target) pairs: seq2seq tasks, text-to-text classification ---
  def pair_example(self, tokenizer, source: Sequence[int], target: Sequence[int], *,
                   max_len: int, target_len: int) -> tuple[Example, list[int]]:
    """(a row of this objective's batch keys, the prompt decoding starts from) of one
    source and target, token ids without framing; the row fits max_len / target_len."""
    raise NotImplementedError(f'objective {self.name!r} does not train on (source, target) '
                              'pairs')

  def target_tokens(self, tokenizer, ids: Sequence[int]) -> int:
    """Target positions a target of `ids` takes with its framing (here: its end token)."""
    return len(ids) + 1

  def decoding(self, tokenizer) -> dict[str, Any]:
    """generate.generate's start_id / eos_id / bidirectional_prompt for this objective's
    rows: what the model is fed first and where its output ends."""
    return {'start_id': None, 'eos_id': tokenizer.eos_id, 'bidirectional_prompt': False}

  def pair_corruptor(self, tokenizer) -> Callable[[Example, np.random.Generator], Example] | None:
    """(row, rng) -> the row with this epoch's noise (None: pairs are not noised)."""
    return None


def apply(model, params, *args, rng: jax.Array | None = None, **kwargs):
  """model.apply with dropout iff an rng is given."""
  deterministic = rng is None
  return model.apply({'params': params}, *args, deterministic=deterministic,
                     rngs=None if deterministic else {'dropout': rng}, **kwargs)


class LanguageModelling(Objective):
  """Objectives scored by next-token cross-entropy on `targets`/`weights`: report perplexity."""

  def summarize(self, values):
    return {**values, 'perplexity': jnp.exp(values['loss'])}
