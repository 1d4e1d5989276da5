"""Forward and backward time of the k×k convs of these models, per conv form and XLA options.

    python -m benchmarks.conv_forms [--batch=8] [--repeats=4] [--results=benchmarks/RESULTS.md]

For each conv shape of the Xception and Inception stems and blocks: one
value-and-gradient step (input and kernel gradients) of XLA's conv and of
`ops.im2col_conv`, compiled with XLA's default CPU options and with
`models.compiler_options()`, of oneDNN's kernels (`ops.onednn`, where they
build), and, where PyTorch is installed, of its conv2d in timm's default
NCHW layout on the same threads. Milliseconds, median of
`--repeats` after one warm-up call, and the rate in GFLOP/s (a forward pass
and two gradients: 3 × 2 × multiply-adds) of XLA's conv under
`compiler_options()` and of PyTorch's; the table is printed and, with
`--results`, appended there with the machine, versions and command.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from benchmarks.throughput import append_table, time_steps
from xception_jax import models
from xception_jax.models import ops
from xception_jax.models.ops import onednn

# (input NHWC at batch 1, kernel HWIO, stride, padding, where it is).
SHAPES = [
    ((299, 299, 3), (3, 3, 3, 32), 2, 'VALID', 'all stems, conv 1'),
    ((149, 149, 32), (3, 3, 32, 64), 1, 'VALID', 'Xception stem, conv 2'),
    ((147, 147, 32), (3, 3, 32, 32), 1, 'VALID', 'Inception stems, conv 2'),
    ((73, 73, 80), (3, 3, 80, 192), 1, 'VALID', 'Inception-V3 stem, conv 5'),
    ((35, 35, 48), (5, 5, 48, 64), 1, 'SAME', 'Inception-V3 Mixed_5'),
    ((35, 35, 64), (3, 3, 64, 96), 1, 'SAME', 'Inception 35×35 blocks'),
    ((35, 35, 288), (3, 3, 288, 384), 2, 'VALID', 'Inception-V3 Mixed_6a'),
    ((17, 17, 128), (1, 7, 128, 128), 1, 'SAME', 'Inception 17×17 blocks'),
    ((17, 17, 128), (7, 1, 128, 192), 1, 'SAME', 'Inception 17×17 blocks'),
    ((8, 8, 448), (3, 3, 448, 384), 1, 'SAME', 'Inception-V3 Mixed_7'),
    ((35, 35, 256), (3, 3, 256, 256), 1, 'SAME', 'Inception-ResNet-v2 Mixed_6a'),
    ((17, 17, 128), (1, 7, 128, 160), 1, 'SAME', 'Inception-ResNet-v2 block17'),
    ((17, 17, 160), (7, 1, 160, 192), 1, 'SAME', 'Inception-ResNet-v2 block17'),
]


def xla_conv(x, kernel, stride, padding):
  return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def im2col_conv(x, kernel, stride, padding):
  return ops.im2col_conv(x, kernel, (stride, stride), padding)


def onednn_conv(x, kernel, stride, padding):
  pads = ops.explicit_pads(x.shape[1:3], kernel.shape[:2], (stride, stride), padding)
  return onednn.conv(x, kernel, (stride, stride), pads)


def median_ms(step: Callable[[], Any], repeats: int) -> float:
  """Median milliseconds of `step()` over `repeats` calls, after one warm-up call."""
  return statistics.median(time_steps(step, 1, repeats)['times']) * 1e3


def time_gradient(conv, x, kernel, stride, padding, options, repeats: int) -> float:
  """Median milliseconds of one value-and-gradient call, compiled with `options`."""
  def loss(x, kernel):
    return 0.5 * jnp.sum(conv(x, kernel, stride, padding) ** 2)
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, kernel).compile(
      options or None)
  return median_ms(lambda: jax.block_until_ready(compiled(x, kernel)), repeats)


def torch_gradient_ms(size, kernel_shape, stride: int, padding: str,
                      batch: int, repeats: int) -> Optional[float]:
  """Median milliseconds of PyTorch's conv2d value and gradients (NCHW), or None without torch."""
  try:
    import torch
  except ImportError:
    return None
  kh, kw, cin, cout = kernel_shape
  # SAME at stride 1 with an odd kernel pads k // 2 on each side, as timm's layers do.
  pad = (0, 0) if padding == 'VALID' else (kh // 2, kw // 2)
  x = torch.randn(batch, cin, *size[:2], requires_grad=True)
  kernel = (0.1 * torch.randn(cout, cin, kh, kw)).requires_grad_()

  def step():
    y = torch.nn.functional.conv2d(x, kernel, stride=stride, padding=pad)
    (0.5 * (y * y).sum()).backward()

  return median_ms(step, repeats)


def gflop(batch: int, size, kernel_shape, stride: int, padding: str) -> float:
  """GFLOP of one value-and-gradient step: 3 × 2 × the forward pass's multiply-adds."""
  kh, kw, cin, cout = kernel_shape
  out = [(n - (k if padding == 'VALID' else 1)) // stride + 1
         for n, k in zip(size[:2], (kh, kw))]
  return 6 * batch * out[0] * out[1] * kh * kw * cin * cout / 1e9


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=4)
  parser.add_argument('--limit', type=int, default=len(SHAPES), help='first N shapes only')
  parser.add_argument('--results', default='', help='Markdown file to append the table to')
  args = parser.parse_args(argv)
  forms = {'XLA conv, default options': (xla_conv, {}),
           'XLA conv, compiler_options()': (xla_conv, models.compiler_options()),
           'im2col, default options': (im2col_conv, {}),
           'im2col, compiler_options()': (im2col_conv, models.compiler_options())}
  if onednn.unavailable_reason() is None:
    forms['oneDNN, compiler_options()'] = (onednn_conv, models.compiler_options())
  lines = ['| input | kernel | stride | where | ' + ' | '.join(f'{f} ms' for f in forms)
           + ' | PyTorch conv2d ms | GFLOP/s, XLA with compiler_options() / PyTorch |',
           '|---|---|---|---|' + '---|' * (len(forms) + 2)]
  for size, kernel_shape, stride, padding, where in SHAPES[:args.limit]:
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, *size))
    kernel = 0.1 * jax.random.normal(jax.random.PRNGKey(1), kernel_shape)
    times = [time_gradient(conv, x, kernel, stride, padding, options, args.repeats)
             for conv, options in forms.values()]
    peer = torch_gradient_ms(size, kernel_shape, stride, padding, args.batch, args.repeats)
    work = gflop(args.batch, size, kernel_shape, stride, padding)
    rates = f'{work / times[1] * 1e3:.0f}' + ('' if peer is None else f' / {work / peer * 1e3:.0f}')
    lines.append(f'| {args.batch}×{size[0]}×{size[1]}×{size[2]} | '
                 f'{"×".join(map(str, kernel_shape))} | {stride} {padding} | {where} | '
                 + ' | '.join(f'{t:.1f}' for t in times)
                 + f' | {"—" if peer is None else f"{peer:.1f}"} | {rates} |')
  table = '\n'.join(lines)
  print(table)
  if args.results:
    append_table(args.results, 'benchmarks.conv_forms', argv,
                 f'k×k conv forms, value and gradient, batch {args.batch}', table)


if __name__ == '__main__':
  main()
