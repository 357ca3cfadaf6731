"""Device mesh and logical-axis rules: the only place that knows how arrays map onto devices.

Layers name their parameter axes ('vocab', 'embed', 'mlp', 'heads', 'kv', and 'layers' for a
scanned stack); these rules map the names onto the mesh axes 'data', 'fsdp' and 'model':

  data   data parallelism: the batch is split, everything else replicated;
  fsdp   the batch is split too, and every parameter and its optimizer state along 'embed'
         (ZeRO-3 / FSDP, Rajbhandari et al. 2020); XLA inserts the all-gathers;
  model  tensor parallelism (Megatron-LM, Shoeybi et al. 2019, Sec 3): attention heads, the
         MLP's hidden units and the vocabulary (embedding rows, untied output columns) are
         split, so each device holds 1/N of every layer and the sums over heads / hidden
         units become all-reduces.

A dimension that an axis does not divide (GPT-2 XL's 25 heads over 2 devices, GPT-2's 50,257
vocabulary rows) is left unsplit along that axis rather than refused: the step stays correct
and only that array is replicated (`plan.py` shows what that costs).
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'model')
# The batch is split over both data axes, 'fsdp' major. With 'data' major, XLA's SPMD
# partitioner (jax 0.10.2, Shardy and GSPMD alike) computes wrong gradients, silently, when a
# slice or gather of the batch-sharded activations (BERT's predicted positions, [CLS]) meets
# weights split over 'fsdp' and 'model' on a mesh with all three axes > 1 (see
# tests/test_tensor_parallel.py; the same family as openxla/xla#40034). Which device holds
# which rows does not matter to the step (losses are sums over rows).
BATCH_AXES = ('fsdp', 'data')
LOGICAL_RULES = (
    ('batch', BATCH_AXES),
    ('layers', None),  # a scanned stack's leading axis: every device runs every layer
    ('embed', 'fsdp'),
    ('vocab', 'model'),
    ('mlp', 'model'),
    ('heads', 'model'),
    ('kv', None),
    # Activations only (models/layers.py `constrain`): the residual stream's features and the
    # sequence stay whole on every device.
    ('length', None),
    ('act_embed', None),
)


def mesh_shape(mesh_cfg, device_count: int) -> tuple[int, int, int]:
  """(data, fsdp, model) sizes of `--config.mesh.*` over `device_count` devices."""
  fsdp, tensor = mesh_cfg.fsdp, mesh_cfg.get('tensor', 1)
  data = mesh_cfg.data if mesh_cfg.data > 0 else device_count // max(fsdp * tensor, 1)
  if fsdp < 1 or tensor < 1 or data * fsdp * tensor != device_count:
    raise ValueError(f'mesh data={mesh_cfg.data} x fsdp={fsdp} x tensor={tensor} does not '
                     f'cover the {device_count} devices; set --config.mesh.data=-1 and fsdp / '
                     'tensor sizes whose product divides the device count')
  return data, fsdp, tensor


def make_mesh(mesh_cfg) -> Mesh:
  """A ('data', 'fsdp', 'model') mesh over all devices of all processes. jax.make_mesh puts
  the last axis on the closest devices: tensor parallelism, which communicates in every
  layer, gets the fastest links."""
  # Auto axes: XLA's partitioner propagates shardings from the annotated inputs and params
  # (explicit-sharding mode would require an out_sharding on every gather).
  return jax.make_mesh(mesh_shape(mesh_cfg, jax.device_count()), MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def rules_for(mesh) -> tuple:
  """LOGICAL_RULES restricted to the axes `mesh` has (a ('data', 'fsdp') mesh replicates
  what 'model' would split)."""
  def present(axes):
    if axes is None or isinstance(axes, str):
      return axes if axes in mesh.axis_names else None
    return tuple(a for a in axes if a in mesh.axis_names) or None
  return tuple((name, present(axes)) for name, axes in LOGICAL_RULES)


def _divisible(spec: P, shape: tuple[int, ...], mesh) -> P:
  """`spec` with each dimension's mesh axes dropped where their size does not divide it."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else axes or ()
    ways = math.prod(mesh.shape[a] for a in names)
    out.append(axes if dim % ways == 0 else None)
  return P(*out)


def logical_sharding(names: tuple, shape: tuple[int, ...], mesh) -> NamedSharding:
  """The NamedSharding of an array with logical axis `names` and `shape` on `mesh`."""
  spec = nn.logical_to_mesh_axes(names, rules_for(mesh))
  return NamedSharding(mesh, _divisible(spec, shape, mesh))


def with_rules(fn: Callable, mesh: Mesh) -> Callable:
  """`fn` traced with `mesh` in force, so the activation constraints that modules name
  (layers.constrain -> constrain_activation) bind to it. Without them XLA's propagation may pick a
  parameter's layout for the activations: with FSDP it split the features over 'fsdp' and
  gave every device the *whole* batch (research/plan.py measures it; docs/performance.md)."""
  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)
  return traced


def constrain_activation(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """`x` constrained to the layout its logical axis `names` have on the mesh in force
  (with_rules); unchanged when none is (initialisation, generation, tests of modules).

  The rules are passed explicitly rather than through flax's `logical_axis_rules` context:
  under that context flax also constrains every parameter it initialises, which breaks
  `nn.DenseGeneral` (it initialises a flattened kernel) when nn.scan traces its body."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return nn.with_logical_constraint(x, names, rules=rules_for(mesh))


def state_shardings(abstract_boxed_state, mesh: Mesh):
  """NamedShardings for a pytree whose parameters carry `nn.with_logical_partitioning` names
  (as returned by `jax.eval_shape` of the init function). Unnamed leaves are replicated."""
  is_boxed = lambda x: isinstance(x, nn.Partitioned)

  def leaf_sharding(leaf):
    if is_boxed(leaf):
      return logical_sharding(leaf.names, leaf.value.shape, mesh)
    return NamedSharding(mesh, P())

  return jax.tree.map(leaf_sharding, abstract_boxed_state, is_leaf=is_boxed)


def batch_shards(mesh: Mesh) -> int:
  """How many ways a batch is split: the data axes' sizes ('model' replicates the batch)."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names)


def check_batch(name: str, size: int, mesh: Mesh, accum: int = 1):
  """A global batch (--config flag `name`) must split evenly over the devices, the gradient
  accumulation steps and the processes."""
  devices = mesh.devices.size
  if size % (devices * accum) or size % jax.process_count():
    raise ValueError(f'{name}={size} must be divisible by the {devices} devices'
                     + (f' x {accum} accumulation steps' if accum > 1 else '')
                     + '; pick a multiple')


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis split over every device; other axes replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def process_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's contiguous share of a batch that every process holds in full (eval)."""
  count, index = jax.process_count(), jax.process_index()
  return {k: np.array_split(v, count)[index] for k, v in batch.items()}


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into one array sharded over the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
