"""TrainState and its sharded initialisation (eval_shape -> shardings -> jit(init))."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from research import sharding


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; all leaves are arrays so Orbax saves it as is."""
  step: jax.Array  # int32 scalar: optimizer updates done
  params: Any
  opt_state: Any
  rng: jax.Array  # uint32[2] raw PRNG key; per-step keys come from fold_in(rng, step)


def sharded_init(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation,
                 seed: int, mesh: Mesh) -> tuple[TrainState, Callable[[], TrainState]]:
  """Plans a TrainState laid out over `mesh` without allocating it.

  `init_params(rng)` returns the model's (logically boxed) params. Returns `(abstract, init)`:
  `abstract` holds shapes, dtypes and shardings (the target of a checkpoint restore and the
  layout of the jitted step); `init()` materialises the state directly in that layout, so no
  device ever holds an unsharded copy.
  """
  def boxed_init(rng):
    params_rng, dropout_rng = jax.random.split(rng)
    params = init_params(params_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=dropout_rng)

  rng = jax.random.PRNGKey(seed)
  boxed_shapes = jax.eval_shape(boxed_init, rng)
  shardings = sharding.state_shardings(boxed_shapes, mesh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.meta.unbox(boxed_shapes), shardings)
  init = jax.jit(lambda r: nn.meta.unbox(boxed_init(r)), out_shardings=shardings)
  return abstract, lambda: init(rng)


def abstract_params(init_params: Callable[[jax.Array], Any], mesh: Mesh | None = None):
  """ShapeDtypeStructs of `init_params(rng)`'s params laid out over `mesh` by the logical
  rules (default: on the first local device), allocating nothing: the target of a params-only
  checkpoint restore, which needs no optimizer."""
  boxed = jax.eval_shape(init_params, jax.random.PRNGKey(0))
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, nn.meta.unbox(boxed))
  else:
    shardings = sharding.state_shardings(boxed, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      nn.meta.unbox(boxed), shardings)


def shardings_of(abstract: TrainState):
  return jax.tree.map(lambda x: x.sharding, abstract)

