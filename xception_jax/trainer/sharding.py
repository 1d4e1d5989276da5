"""Device mesh and sharding rules, in one place.

Data parallelism over every device of every process: the batch dimension is
split over the mesh axis 'data'; parameters, optimizer state and averages
follow `STATE_RULES` (all replicated today; a rule such as
`('.*/predictions/kernel', P(None, 'data'))` would shard a large classifier).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'

# (regex over 'collection/.../leaf' paths, PartitionSpec); the first match wins.
STATE_RULES: Sequence[tuple[str, P]] = (('.*', P()),)


def make_mesh() -> Mesh:
  """A 1-D mesh over all devices of all processes."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def data_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
  """The batch dimension split over the devices: the leading one, or the second of
  `stacked` batches (several steps' batches along a leading axis)."""
  return NamedSharding(mesh, P(None, DATA_AXIS) if stacked else P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: Mesh) -> int:
  """Returns the per-process batch; a ValueError if the batch does not divide evenly."""
  devices, processes = mesh.devices.size, jax.process_count()
  if global_batch % devices:
    raise ValueError(f'batch_size {global_batch} does not divide over {devices} devices; '
                     f'use a multiple of {devices} (e.g. {devices * max(1, global_batch // devices)}).')
  return global_batch // processes


def state_shardings(abstract_state: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, P]] = STATE_RULES) -> Any:
  """A NamedSharding for every leaf of `abstract_state`, chosen by `rules`."""
  def spec_for(path) -> NamedSharding:
    name = '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
                    for k in path)
    for pattern, spec in rules:
      if re.fullmatch(pattern, name):
        return NamedSharding(mesh, spec)
    raise ValueError(f'No sharding rule matches {name}.')
  return jax.tree_util.tree_map_with_path(lambda path, _: spec_for(path), abstract_state)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh,
                 stacked: bool = False) -> dict[str, jax.Array]:
  """Assembles per-process numpy batches (`stacked`: several steps' batches along a
  leading axis) into global arrays sharded over 'data'."""
  sharding = data_sharding(mesh, stacked)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
