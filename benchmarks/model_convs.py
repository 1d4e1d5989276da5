"""Every conv of a model's training step: oneDNN's form here against PyTorch channels-last.

    python -m benchmarks.model_convs --model=inception_resnet_v2 [--batch=8] [--repeats=5]
        [--option=NAME=VALUE ...] [--results=benchmarks/RESULTS.md]

The convs are read from the model itself: its forward pass is traced with
XLA's own conv for every family (`Execution.reference()`) and each
`conv_general_dilated` in the program gives one geometry (input, kernel,
strides, padding, groups), counted as often as it occurs. Each geometry is
then timed as the training step runs it, the value and both gradients (no
input gradient for the convs on the 3-channel image), median of `--repeats`
after two warm-up calls: by `ops.onednn.conv`, what `'auto'` picks on one CPU
device, and, where PyTorch is installed, by its conv2d in channels-last (timm's
fastest CPU layout) on its default threads. PyTorch runs first, every
geometry, then ours: XLA's threads still spin a while after a call and slow
PyTorch's. Rows are ordered by what a geometry costs us more than PyTorch in
one step (count × difference); the totals say whether a model's step gap lies
in its convs or elsewhere. The table is printed and, with `--results`,
appended there with the machine, versions and command.
"""
from __future__ import annotations

import argparse
import collections
import statistics
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.throughput import append_table, time_steps
from xception_jax import models
from xception_jax.models.ops import onednn


class Geometry(NamedTuple):
  """One conv at batch 1: input (H, W, C), kernel HWIO, strides, ((top, bottom), (left, right))
  padding, feature groups."""
  size: tuple[int, int, int]
  kernel: tuple[int, int, int, int]
  strides: tuple[int, int]
  pads: tuple[tuple[int, int], tuple[int, int]]
  groups: int

  @property
  def on_image(self) -> bool:
    """The stem's first conv reads the image, which the training step does not differentiate."""
    return self.size[2] == 3


def equations(jaxpr):
  """Every equation of `jaxpr` and of the programs nested in it."""
  for equation in jaxpr.eqns:
    yield equation
    for value in equation.params.values():
      for inner in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(inner, jax.extend.core.ClosedJaxpr):
          yield from equations(inner.jaxpr)
        elif isinstance(inner, jax.extend.core.Jaxpr):
          yield from equations(inner)


def model_convs(name: str, image_size: int, **options) -> collections.Counter:
  """Geometry → how many times the model's forward pass runs a conv of that geometry."""
  model = models.create_model(name, execution=models.Execution.reference(), **options)
  x = jnp.zeros((1, image_size, image_size, 3))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
  counts = collections.Counter()
  for equation in equations(jaxpr.jaxpr):
    if equation.primitive.name != 'conv_general_dilated':
      continue
    lhs, rhs = (v.aval.shape for v in equation.invars)
    numbers = equation.params['dimension_numbers']
    # Read through the dimension numbers: (H, W, C) of the input, HWIO of the kernel.
    size = tuple(lhs[d] for d in (*numbers.lhs_spec[2:], numbers.lhs_spec[1]))
    kernel = tuple(rhs[d] for d in (*numbers.rhs_spec[2:], numbers.rhs_spec[1],
                                    numbers.rhs_spec[0]))
    counts[Geometry(size, kernel, tuple(equation.params['window_strides']),
                    tuple(map(tuple, equation.params['padding'])),
                    equation.params['feature_group_count'])] += 1
  return counts


def median_ms(step: Callable[[], Any], repeats: int) -> float:
  return statistics.median(time_steps(step, 2, repeats)['times']) * 1e3


def arrays(geometry: Geometry, batch: int) -> tuple[np.ndarray, np.ndarray]:
  """A random NHWC input and HWIO kernel of `geometry`."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, *geometry.size), dtype=np.float32)
  kernel = 0.1 * rng.standard_normal(geometry.kernel, dtype=np.float32)
  return x, kernel


def ours_ms(geometry: Geometry, batch: int, repeats: int) -> float:
  """oneDNN's form: the value and the gradients the training step takes, one jitted call."""
  def step(x, kernel, dy):
    y, backward = jax.vjp(lambda x, kernel: onednn.conv(
        x, kernel, geometry.strides, geometry.pads, geometry.groups), x, kernel)
    dx, dkernel = backward(dy)
    return (y, dkernel) if geometry.on_image else (y, dx, dkernel)

  x, kernel = arrays(geometry, batch)
  dy = jnp.ones(jax.eval_shape(lambda x, k: onednn.conv(
      x, k, geometry.strides, geometry.pads, geometry.groups), x, kernel).shape)
  compiled = jax.jit(step).lower(x, kernel, dy).compile(models.compiler_options())
  return median_ms(lambda: jax.block_until_ready(compiled(x, kernel, dy)), repeats)


def torch_ms(geometry: Geometry, batch: int, repeats: int) -> Optional[float]:
  """PyTorch's conv2d in channels-last, value and the same gradients; None without torch."""
  try:
    import torch
  except ImportError:
    return None
  x, kernel = arrays(geometry, batch)
  (top, bottom), (left, right) = geometry.pads
  channels_last = torch.channels_last
  x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=channels_last)
  kernel = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous(memory_format=channels_last)
  x.requires_grad_(not geometry.on_image)
  kernel.requires_grad_()

  def step():
    padded = x
    if (top, left) != (bottom, right):   # conv2d pads symmetrically only.
      padded = torch.nn.functional.pad(x, (left, right, top, bottom))
    y = torch.nn.functional.conv2d(padded, kernel, stride=geometry.strides,
                                   padding=0 if padded is not x else (top, left),
                                   groups=geometry.groups)
    y.backward(torch.ones_like(y))

  return median_ms(step, repeats)


def table(counts: collections.Counter, theirs: dict, ours: dict, batch: int) -> str:
  def extra(g):   # What this geometry costs us more than PyTorch in one step, ms.
    return counts[g] * (ours[g] - theirs[g]) if theirs[g] is not None else 0.0

  lines = ['| convs | input | kernel | strides | padding | groups | PyTorch cl ms | ours ms '
           '| PyTorch ÷ ours | count × (ours − PyTorch) ms |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for g in sorted(counts, key=extra, reverse=True):
    peer = theirs[g]
    lines.append(
        f'| {counts[g]} | {batch}×{"×".join(map(str, g.size))} | {"×".join(map(str, g.kernel))} '
        f'| {g.strides[0]},{g.strides[1]} | {g.pads[0][0]},{g.pads[0][1]},{g.pads[1][0]},'
        f'{g.pads[1][1]} | {g.groups} | {"—" if peer is None else f"{peer:.2f}"} '
        f'| {ours[g]:.2f} | {"—" if peer is None else f"{peer / ours[g]:.2f}"} '
        f'| {"—" if peer is None else f"{extra(g):+.1f}"} |')
  total_ours = sum(counts[g] * ours[g] for g in counts)
  if all(t is not None for t in theirs.values()):
    total_theirs = sum(counts[g] * theirs[g] for g in counts)
    lines.append(f'| {sum(counts.values())} | all, one step | | | | | {total_theirs:.0f} '
                 f'| {total_ours:.0f} | {total_theirs / total_ours:.2f} '
                 f'| {total_ours - total_theirs:+.0f} |')
  else:
    lines.append(f'| {sum(counts.values())} | all, one step | | | | | — | {total_ours:.0f} '
                 '| — | — |')
  return '\n'.join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='xception')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--image-size', type=int, default=299)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--option', action='append', default=[],
                      help='a model option NAME=VALUE (e.g. width_multiplier=0.25)')
  parser.add_argument('--results', default='', help='Markdown file to append the table to')
  args = parser.parse_args(argv)
  try:   # One line, before any work, where the model, an option or oneDNN's form is wrong.
    onednn.require()
    counts = model_convs(args.model, args.image_size, **models.parse_options(args.option))
  except (ValueError, onednn.OneDNNUnavailable) as e:
    parser.error(str(e))
  theirs = {g: torch_ms(g, args.batch, args.repeats) for g in counts}
  ours = {g: ours_ms(g, args.batch, args.repeats) for g in counts}
  text = table(counts, theirs, ours, args.batch)
  print(text)
  if args.results:
    append_table(args.results, 'benchmarks.model_convs', argv,
                 f'{args.model} convs, oneDNN form against PyTorch channels-last, value and '
                 f'gradients, batch {args.batch}', text)

if __name__ == '__main__':
  main()
