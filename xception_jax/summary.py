r"""Prints a model's layer table: module path, output shape, parameters; then totals.

  python -m xception_jax.summary --model=xception --image_size=299 --depth=2
  python -m xception_jax.summary --model=xception --set=width_multiplier=0.25
"""
from __future__ import annotations

import ast
from typing import Any, Sequence

import jax
import flax.linen as nn
import jax.numpy as jnp
from absl import app, flags
from flax import traverse_util

from xception_jax import models

_MODEL = flags.DEFINE_string('model', 'xception', 'Registered model name.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 299, 'Square input size in pixels.')
_DEPTH = flags.DEFINE_integer('depth', 1, 'Deepest module level shown (1 = top-level blocks).')
_SET = flags.DEFINE_multi_string('set', [], 'Model option as key=value (Python literal).')


def parse_options(assignments: Sequence[str]) -> dict[str, Any]:
  """Turns ['width_multiplier=0.25', 'fc_layers=(4096,4096)'] into keyword arguments."""
  options = {}
  for assignment in assignments:
    key, sep, value = assignment.partition('=')
    if not sep:
      raise ValueError(f'--set expects key=value, got {assignment!r}.')
    try:
      options[key.strip()] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      options[key.strip()] = value  # A bare word such as relu is a string.
  return options


def count(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


def summary_rows(model, image_size: int, depth: int) -> tuple[list[tuple[str, str, int]], dict]:
  """(path, output shape, parameter count) per module down to `depth`, in call order."""
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  calls = []  # [path, output] in the order modules are entered.

  def record(next_fun, args, kwargs, context):
    if context.method_name != '__call__' or context.module.scope is None:
      return next_fun(*args, **kwargs)
    entry = [tuple(context.module.scope.path), None]
    calls.append(entry)
    entry[1] = next_fun(*args, **kwargs)
    return entry[1]

  def run():
    variables = model.init(jax.random.PRNGKey(0), images, train=False)
    with nn.intercept_methods(record):
      model.apply(variables, images, train=False)
    return variables

  variables = jax.eval_shape(run)
  params = traverse_util.flatten_dict(variables.get('params', {}))
  rows = []
  for module, output in calls:
    if not module or len(module) > depth:
      continue
    shapes = ' '.join(str(tuple(leaf.shape)) for leaf in jax.tree.leaves(output))
    n = sum(int(v.size) for p, v in params.items() if p[:len(module)] == module)
    rows.append(('/'.join(module), shapes, n))
  return rows, variables


def format_summary(name: str, model, image_size: int, depth: int) -> str:
  rows, variables = summary_rows(model, image_size, depth)
  width = max([len(r[0]) for r in rows] + [6])
  lines = [f'{name} at {image_size}x{image_size}',
           f'{"module":<{width}}  {"output shape":<24} {"params":>12}']
  lines += [f'{path:<{width}}  {shape:<24} {n:>12,}' for path, shape, n in rows]
  trainable = count(variables.get('params', {}))
  other = count({k: v for k, v in variables.items() if k != 'params'})
  lines += [f'Trainable parameters: {trainable:,}', f'Non-trainable (BN statistics): {other:,}',
            f'Total: {trainable + other:,}']
  return '\n'.join(lines)


def main(argv):
  del argv
  model = models.create_model(_MODEL.value, **parse_options(_SET.value))
  print(format_summary(_MODEL.value, model, _IMAGE_SIZE.value, _DEPTH.value))


if __name__ == '__main__':
  app.run(main)
