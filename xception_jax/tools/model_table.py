"""Layer tables of models: module path, output shape and parameters per module, then totals."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util


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

  def run():  # Initialising runs the forward pass once: its calls are the table's rows.
    with nn.intercept_methods(record):
      return model.init(jax.random.PRNGKey(0), images, train=False)

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


# Cached: every training run logs its table, and the trace behind it is the same each time.
@functools.lru_cache(maxsize=32)
def format_summary(name: str, model, image_size: int, depth: int) -> str:
  """The table of `model` at `image_size`: rows down to `depth`, then the totals."""
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
