"""Device mesh and logical-axis rules: the only place that knows how arrays map onto devices.

Layers name their parameter axes ('vocab', 'embed', 'mlp', 'heads', 'kv'); these rules map the
names onto the mesh axes 'data' and 'fsdp'. Data parallelism splits the batch over both axes;
FSDP (ZeRO-3, Rajbhandari et al. 2020) additionally splits every parameter and its optimizer
state along 'embed' over the 'fsdp' axis, and XLA inserts the all-gathers.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ('data', 'fsdp')
LOGICAL_RULES = (
    ('batch', BATCH_AXES),
    ('embed', 'fsdp'),
    ('vocab', None),
    ('mlp', None),
    ('heads', None),
    ('kv', None),
)


def make_mesh(mesh_cfg) -> Mesh:
  """A ('data', 'fsdp') mesh over all devices of all processes."""
  n = jax.device_count()
  fsdp = mesh_cfg.fsdp
  data = mesh_cfg.data if mesh_cfg.data > 0 else n // max(fsdp, 1)
  if fsdp < 1 or data * fsdp != n:
    raise ValueError(f'mesh data={mesh_cfg.data} x fsdp={fsdp} does not cover the {n} devices; '
                     'set --config.mesh.data=-1 and an fsdp size that divides the device count')
  # Auto axes: XLA's partitioner propagates shardings from the annotated inputs and params
  # (explicit-sharding mode would require an out_sharding on every gather).
  return jax.make_mesh((data, fsdp), ('data', 'fsdp'),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis split over every device; other axes replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def state_shardings(abstract_boxed_state, mesh: Mesh):
  """NamedShardings for a pytree whose parameters carry `nn.with_logical_partitioning` names
  (as returned by `jax.eval_shape` of the init function). Unnamed leaves are replicated."""
  logical_specs = nn.get_partition_spec(abstract_boxed_state)
  return nn.logical_to_mesh_sharding(logical_specs, mesh, LOGICAL_RULES)


def process_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's contiguous share of a batch that every process holds in full (eval)."""
  count, index = jax.process_count(), jax.process_index()
  return {k: np.array_split(v, count)[index] for k, v in batch.items()}


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's slice of the batch into one array sharded over the mesh."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
