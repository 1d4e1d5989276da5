"""Fill a model's variable tree from a flat {path: array} mapping, checking every leaf."""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Path = tuple[str, ...]
_MAX_NAMED = 12


def template_input_size(model: nn.Module) -> int:
  """The smallest square input on which `model` creates all its variables.

  That is its `min_input_size`, except for an auxiliary classifier that needs more.
  """
  if getattr(model, 'aux_logits', False) and model.include_top:
    return max(model.min_input_size, model.aux_min_input_size)
  return model.min_input_size


def _init_abstract(model: nn.Module, image_size: Optional[int]):
  size = image_size or template_input_size(model)
  images = jnp.zeros((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, train=False))


def variable_template(model: nn.Module, image_size: Optional[int] = None) -> dict[str, Any]:
  """Shapes and dtypes of `model`'s variables, without allocating them.

  `image_size` defaults to the smallest input that creates every variable.
  """
  return _init_abstract(model, image_size)


def layer_order(model: nn.Module) -> tuple[list[tuple[Path, str]], dict[str, Any]]:
  """`model`'s weight layers in call order, as (module path, kind), and its variable template.

  Kinds: 'conv_bn' (ConvBN), 'sep_bn' (SeparableConvBN), 'conv' and 'dense'
  (bare nn.Conv / nn.Dense). Call order is creation order, which our models
  keep equal to the references' so that unnamed source layers pair by position.
  """
  from xception_jax.models.layers import ConvBN, SeparableConvBN
  kinds = ((ConvBN, 'conv_bn'), (SeparableConvBN, 'sep_bn'), (nn.Conv, 'conv'),
           (nn.Dense, 'dense'))
  order, composite = [], set()

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == '__call__' and module.scope is not None:
      path = tuple(module.scope.path)
      kind = next((k for cls, k in kinds if isinstance(module, cls)), None)
      if kind and path[:-1] not in composite:
        order.append((path, kind))
        if kind.endswith('_bn'):
          composite.add(path)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    template = _init_abstract(model, None)
  return order, template


class Converted(NamedTuple):
  """Source tensors under our variable paths, ready for `fill_variables`."""
  flat: dict[Path, np.ndarray]
  origins: dict[Path, str]   # Path → the source tensor or layer it comes (or should come) from.
  unused: list[str]          # Source tensors or layers that found no place in the model.


def _join(names: Sequence[str]) -> str:
  more = f' and {len(names) - _MAX_NAMED} more' if len(names) > _MAX_NAMED else ''
  return ', '.join(names[:_MAX_NAMED]) + more


def fill_variables(template: Mapping[str, Any], flat: Mapping[Path, np.ndarray],
                   source: str, origins: Optional[Mapping[Path, str]] = None,
                   unused: Sequence[str] = ()) -> dict[str, Any]:
  """Returns `template`'s tree with every leaf taken from `flat`.

  `flat` maps paths like ('params', 'block1_conv1', 'conv', 'kernel') to arrays;
  `origins` optionally names the source of each path for the messages, and
  `unused` lists source items that were not placed. Raises a ValueError naming
  the variables the source lacks, the source tensors the model has no place
  for, and every shape mismatch.
  """
  origins = origins or {}
  label = lambda p: '/'.join(p) + (f' ({origins[p]})' if p in origins else '')
  wanted = traverse_util.flatten_dict(dict(template))
  missing = sorted(label(p) for p in wanted if p not in flat)
  unexpected = sorted(unused) + sorted(label(p) for p in flat if p not in wanted)
  mismatched = [f'{label(p)} {tuple(flat[p].shape)} vs model {tuple(wanted[p].shape)}'
                for p in wanted if p in flat and tuple(flat[p].shape) != tuple(wanted[p].shape)]
  problems = []
  if missing:
    problems.append(f'missing in {source}: {_join(missing)}')
  if unexpected:
    problems.append(f'not in the model: {_join(unexpected)}')
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
