"""Save and load a model's variables as an Orbax checkpoint (no pickle involved)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np


def save_variables(variables: dict[str, Any], directory: str | os.PathLike) -> Path:
  """Writes `{'params', 'batch_stats'}` to `directory` (which must not exist yet)."""
  import orbax.checkpoint as ocp
  directory = Path(directory).absolute()
  if directory.exists():
    raise FileExistsError(f'{directory} exists; choose a new directory for the converted weights.')
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory, jax.tree.map(np.asarray, variables))
  return directory


def load_variables(directory: str | os.PathLike) -> dict[str, Any]:
  """Reads variables written by `save_variables` as host (numpy) arrays."""
  import orbax.checkpoint as ocp
  directory = Path(directory).absolute()
  if not directory.is_dir():
    raise FileNotFoundError(f'No converted-weights checkpoint at {directory}.')
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(directory)
    tree = metadata.item_metadata.tree if hasattr(metadata, 'item_metadata') else metadata
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
    return checkpointer.restore(directory, target)
