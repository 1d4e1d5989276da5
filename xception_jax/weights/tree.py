"""Fill a model's variable tree from a flat {path: array} mapping, checking every leaf."""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Path = tuple[str, ...]
_MAX_NAMED = 12


def variable_template(model: nn.Module, image_size: int = 299) -> dict[str, Any]:
  """Shapes and dtypes of `model`'s variables, without allocating them."""
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, train=False))


def _names(paths) -> str:
  paths = sorted('/'.join(p) for p in paths)
  more = f' and {len(paths) - _MAX_NAMED} more' if len(paths) > _MAX_NAMED else ''
  return ', '.join(paths[:_MAX_NAMED]) + more


def fill_variables(template: Mapping[str, Any], flat: Mapping[Path, np.ndarray],
                   source: str) -> dict[str, Any]:
  """Returns `template`'s tree with every leaf taken from `flat`.

  `flat` maps paths like ('params', 'block1_conv1', 'conv', 'kernel') to arrays.
  Raises a ValueError naming the variables the source lacks, the source tensors
  the model has no place for, and every shape mismatch.
  """
  wanted = traverse_util.flatten_dict(dict(template))
  missing = [p for p in wanted if p not in flat]
  unexpected = [p for p in flat if p not in wanted]
  mismatched = [f'{"/".join(p)} {tuple(flat[p].shape)} vs model {tuple(wanted[p].shape)}'
                for p in wanted if p in flat and tuple(flat[p].shape) != tuple(wanted[p].shape)]
  problems = []
  if missing:
    problems.append(f'missing in {source}: {_names(missing)}')
  if unexpected:
    problems.append(f'not in the model: {_names(unexpected)}')
  if mismatched:
    problems.append('shape mismatch: ' + '; '.join(mismatched[:_MAX_NAMED]))
  if problems:
    raise ValueError(f'Cannot load {source} into the model: ' + ' | '.join(problems))
  filled = {p: jnp.asarray(flat[p], dtype=wanted[p].dtype) for p in wanted}
  return traverse_util.unflatten_dict(filled)


def conv_bn(flat: dict[Path, np.ndarray], prefix: Path, kernel: np.ndarray,
            norm: Mapping[str, np.ndarray]) -> None:
  """Adds a ConvBN's conv kernel and batch norm under `prefix` to `flat`."""
  flat[('params', *prefix, 'conv', 'kernel')] = kernel
  batch_norm(flat, (*prefix, 'bn'), norm)


def batch_norm(flat: dict[Path, np.ndarray], prefix: Path,
               norm: Mapping[str, np.ndarray]) -> None:
  """Adds batch norm variables given as scale (optional), bias, mean, var."""
  if norm.get('scale') is not None:
    flat[('params', *prefix, 'scale')] = norm['scale']
  flat[('params', *prefix, 'bias')] = norm['bias']
  flat[('batch_stats', *prefix, 'mean')] = norm['mean']
  flat[('batch_stats', *prefix, 'var')] = norm['var']
