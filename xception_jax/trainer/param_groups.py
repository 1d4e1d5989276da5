"""Transfer learning's parameter groups: frozen parameters and learning-rate multipliers.

A parameter is named by its path, '/'-joined ('block4/sepconv1/pointwise/kernel',
'head/predictions/bias'). Patterns are regular expressions searched in that
name, or the words 'head' (the classifier and auxiliary classifier) and
'backbone' (everything else).

- `freeze`: a pattern; matching parameters never change, and the batch norms
  whose parameters are all frozen normalise with their moving statistics and
  leave them unchanged (Keras's `trainable=False`).
- `lr_multipliers`: 'PATTERN=M,PATTERN=M,...'; a parameter's learning rate is
  the schedule's times the M of the first pattern it matches (1 if none).
"""
from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterable

import flax.linen as nn
import optax
from flax import traverse_util

from xception_jax.models.ops.batch_norm import FusedBatchNorm

# Sub-trees of the classifier: what 'head' names and what a new number of classes re-initialises.
HEAD_MODULES = ('head', 'aux')
FROZEN = 'frozen'


def _matcher(pattern: str) -> Callable[[tuple[str, ...]], bool]:
  if pattern == 'head':
    return lambda path: path[0] in HEAD_MODULES
  if pattern == 'backbone':
    return lambda path: path[0] not in HEAD_MODULES
  compiled = re.compile(pattern)
  return lambda path: bool(compiled.search('/'.join(path)))


def parse_multipliers(spec: str) -> list[tuple[str, float]]:
  """'backbone=0.1,head=1' → [('backbone', 0.1), ('head', 1.0)]; a ValueError saying why not."""
  groups = []
  for item in filter(None, (part.strip() for part in spec.split(','))):
    pattern, sep, value = item.rpartition('=')
    try:
      multiplier = float(value)
      re.compile(pattern)
    except (ValueError, re.error):
      multiplier = -1.0
    if not sep or not pattern or multiplier < 0:
      raise ValueError(f"lr_multipliers must be 'PATTERN=M,...' with regular expressions or "
                       f"'backbone'/'head' and multipliers >= 0, got {spec!r}.")
    groups.append((pattern, multiplier))
  return groups


def check_pattern(pattern: str) -> str:
  """'' when `pattern` is a valid `freeze` value, else what is wrong with it."""
  try:
    re.compile(pattern)
  except re.error as e:
    return f'not a regular expression ({e})'
  return ''


def labels(params: Any, freeze: str = '', lr_multipliers: str = '') -> Any:
  """A tree like `params` labelling each leaf 'frozen' or with its learning-rate multiplier."""
  frozen = _matcher(freeze) if freeze else (lambda path: False)
  groups = [(_matcher(p), m) for p, m in parse_multipliers(lr_multipliers)]

  def label(path):
    if frozen(path):
      return FROZEN
    return repr(next((m for match, m in groups if match(path)), 1.0))
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({path: label(path) for path in flat})


def grouped(tx: optax.GradientTransformation, freeze: str,
            lr_multipliers: str) -> optax.GradientTransformation:
  """`tx` per group: frozen leaves get zero updates, the others `tx`'s updates times their
  multiplier. Without groups, `tx` itself (and its state's structure) unchanged."""
  if not freeze and not lr_multipliers:
    return tx
  multipliers = {1.0} | {m for _, m in parse_multipliers(lr_multipliers)}
  transforms = {repr(m): tx if m == 1.0 else optax.chain(tx, optax.scale(m))
                for m in multipliers}
  transforms[FROZEN] = optax.set_to_zero()
  return optax.multi_transform(transforms,
                               lambda params: labels(params, freeze, lr_multipliers))


def trainable(tree: Any, freeze: str) -> Any:
  """The leaves of a params-like tree that `freeze` leaves trainable: `tree` itself when
  nothing is frozen, else a flat {path: leaf} of the others."""
  if not freeze:
    return tree
  frozen = _matcher(freeze)
  return {path: leaf for path, leaf in traverse_util.flatten_dict(tree).items()
          if not frozen(path)}


def frozen_norms(variables: dict[str, Any], freeze: str) -> frozenset[tuple[str, ...]]:
  """Module paths of the batch norms whose every parameter `freeze` freezes."""
  if not freeze:
    return frozenset()
  frozen = _matcher(freeze)
  norms = {path[:-1] for path in traverse_util.flatten_dict(variables.get('batch_stats', {}))}
  params = traverse_util.flatten_dict(variables['params'])
  return frozenset(norm for norm in norms
                   if all(frozen(p) for p in params if p[:len(norm)] == norm))


@contextlib.contextmanager
def norms_in_inference_mode(paths: Iterable[tuple[str, ...]]):
  """Within the context, the batch norms at `paths` run as at inference (moving statistics,
  not updated) whatever the call's `train`, as a frozen Keras layer does."""
  paths = frozenset(paths)

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if (paths and context.method_name == '__call__' and
        isinstance(module, (nn.BatchNorm, FusedBatchNorm)) and tuple(module.scope.path) in paths):
      # Norm modules are rebuilt by every apply: this instance serves this call only.
      object.__setattr__(module, 'use_running_average', True)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(intercept):
    yield
