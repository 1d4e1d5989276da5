"""Converted weights on disk: the variables (an Orbax checkpoint, no pickle) and what they are.

A directory written by `save` holds
  variables/    {'params', 'batch_stats'} as an Orbax checkpoint;
  weights.json  the model and options that rebuild the network, the evaluation
                preprocessing, the class names where known, and the source.
`load(directory)` returns the model and its variables from it alone.
Directories of the older layout (the checkpoint itself, no weights.json) still
load with `load_variables`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np

from xception_jax import models
from xception_jax.models.inputs import Preprocessing

INFO_FILE = 'weights.json'
VARIABLES = 'variables'


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
  """What a converted-weights directory holds, beside the arrays.

  `model` and `options` rebuild the network (`models.create_model(model,
  **options)`); `preprocessing` is how its source evaluated it; `class_names`
  names the outputs where known (None otherwise); `source` says where the
  weights came from.
  """
  model: str
  options: dict[str, Any]
  preprocessing: Preprocessing = Preprocessing()
  class_names: Optional[tuple[str, ...]] = None
  source: str = ''

  def create_model(self, **overrides) -> nn.Module:
    """The model these weights fit; `overrides` (e.g. `dtype`, `execution`) are passed on."""
    return models.create_model(self.model, **{**self.options, **overrides})

  def to_json(self) -> dict[str, Any]:
    return {'model': self.model, 'options': self.options,
            'preprocessing': self.preprocessing.to_json(),
            'class_names': None if self.class_names is None else list(self.class_names),
            'source': self.source}

  @classmethod
  def from_json(cls, record: dict[str, Any]) -> 'WeightsInfo':
    names = record.get('class_names')
    return cls(model=record['model'],
               options=models.registry.options_from_json(record.get('options', {})),
               preprocessing=Preprocessing.from_json(record.get('preprocessing', {})),
               class_names=None if names is None else tuple(names),
               source=record.get('source', ''))


def describe(model: nn.Module, preprocessing: Preprocessing = Preprocessing(),
             class_names: Optional[Sequence[str]] = None, source: str = '') -> WeightsInfo:
  """The `WeightsInfo` of weights that fit `model` (a registered model)."""
  name, options = models.model_config(model)
  if class_names is not None and model.include_top and len(class_names) != model.num_classes:
    raise ValueError(f'{len(class_names)} class names for a model with {model.num_classes} '
                     'outputs.')
  return WeightsInfo(name, options, preprocessing,
                     None if class_names is None else tuple(class_names), source)


def read_class_names(path: str | os.PathLike, num_classes: int) -> list[str]:
  """Class names from a text file, one per non-empty line; as many as the model's classes."""
  names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
  if len(names) != num_classes:
    raise ValueError(f'{path} names {len(names)} classes; the model has {num_classes}.')
  return names


def _write_variables(variables: dict[str, Any], directory: Path) -> None:
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory, jax.tree.map(np.asarray, variables))


def _read_variables(directory: Path) -> dict[str, Any]:
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(directory)
    tree = metadata.item_metadata.tree if hasattr(metadata, 'item_metadata') else metadata
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
    return checkpointer.restore(directory, target)


def new_directory(directory: str | os.PathLike) -> Path:
  """`directory` as an absolute path; FileExistsError if it exists (converted weights are
  written to a new directory, never over one)."""
  directory = Path(directory).absolute()
  if directory.exists():
    raise FileExistsError(f'{directory} exists; choose a new directory for the converted weights.')
  return directory


def save(directory: str | os.PathLike, variables: dict[str, Any], info: WeightsInfo) -> Path:
  """Writes `variables` and `info` to `directory`, which must not exist yet.

  The directory appears complete or not at all: it is written under a
  temporary name beside it and renamed at the end.
  """
  directory = new_directory(directory)
  directory.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=f'.{directory.name}.', dir=directory.parent))
  try:
    _write_variables(variables, staging / VARIABLES)
    (staging / INFO_FILE).write_text(json.dumps(info.to_json(), indent=2) + '\n')
    try:
      staging.rename(directory)
    except OSError:
      if directory.exists():  # Written meanwhile by another process.
        raise FileExistsError(f'{directory} exists; choose a new directory for the converted '
                              'weights.') from None
      raise
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return directory


def is_converted(directory: str | os.PathLike) -> bool:
  """Whether `directory` holds weights written by `save`."""
  return (Path(directory) / INFO_FILE).is_file()


def load_info(directory: str | os.PathLike) -> WeightsInfo:
  """The `WeightsInfo` of a directory written by `save` (or by `weights.pretrained`)."""
  path = Path(directory).absolute() / INFO_FILE
  if not path.is_file():
    raise FileNotFoundError(f'{path.parent} has no {INFO_FILE}: not converted weights of this '
                            'version (older ones load with weights.load_variables and an explicit '
                            'model).')
  return WeightsInfo.from_json(json.loads(path.read_text()))


def load_variables(directory: str | os.PathLike) -> dict[str, Any]:
  """Reads the variables of converted weights (either layout) as host (numpy) arrays."""
  directory = Path(directory).absolute()
  if not directory.is_dir():
    raise FileNotFoundError(f'No converted-weights checkpoint at {directory}.')
  return _read_variables(directory / VARIABLES if is_converted(directory) else directory)


def load(directory: str | os.PathLike, **overrides) -> tuple[nn.Module, dict[str, Any]]:
  """`(model, variables)` of converted weights: the model rebuilt as it was converted.

  `overrides` go to `create_model` (e.g. `dtype=jnp.bfloat16`); the variables
  are host arrays.
  """
  info = load_info(directory)
  return info.create_model(**overrides), load_variables(directory)


def save_variables(variables: dict[str, Any], directory: str | os.PathLike) -> Path:
  """Writes bare `{'params', 'batch_stats'}` to `directory` (the older layout, no model info)."""
  directory = new_directory(directory)
  _write_variables(variables, directory)
  return directory
