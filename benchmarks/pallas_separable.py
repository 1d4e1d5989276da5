"""A Pallas kernel that fuses Xception's depthwise 3×3 conv into the pointwise matmul.

    python -m benchmarks.pallas_separable [--batch=128] [--dtype=bfloat16]

A trial, not one of the models' forms: XLA runs a separable conv as two
kernels (cuDNN's grouped conv, then a 1×1 conv), writing the depthwise output
to memory and reading it back. Here one kernel computes each tile of the depthwise output in registers
and multiplies it straight into the pointwise kernel. Forward pass only, stride
1, SAME padding (every separable conv in Xception): a trial of whether the
fusion pays before any gradient is written for it. The benchmark times it
against XLA's two convs on each of Xception's separable-conv shapes and
prints the step-weighted total; on a CPU it runs the kernel in Pallas's
interpreter (values only: timings there mean nothing).

Result (NVIDIA H200, batch 128, bfloat16, 2026-11-28, benchmarks/RESULTS.md):
slower than XLA's two convs at every shape, 0.42× over the whole set with the
best block sizes (0.50× for the kernel alone), so no gradient was written.

Layout, chosen for Pallas's Triton lowering, which needs every array a
kernel touches to have power-of-two dimensions: the input is zero-padded to
(N, H+2, W+2, C') and flattened over its pixels, so the nine taps of a tile
of BM consecutive padded pixels are nine row-shifted (BM, BK) loads; outputs
are computed at the padding pixels too and cut away afterwards (2.7 % more
work at 147×147, 22 % at 19×19). Channels are zero-padded to whole blocks.
"""
from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from benchmarks.device_ceilings import median_seconds

# Xception's separable convs at 299×299: (spatial size, in channels, out channels, count).
XCEPTION_SEPARABLE = ((147, 64, 128, 1), (147, 128, 128, 1), (74, 128, 256, 1),
                      (74, 256, 256, 1), (37, 256, 728, 1), (37, 728, 728, 1),
                      (19, 728, 728, 25), (19, 728, 1024, 1), (10, 1024, 1536, 1),
                      (10, 1536, 2048, 1))


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _kernel(x_ref, dw_ref, pw_ref, y_ref, *, row: int, block_m: int, block_k: int,
            block_f: int, f_blocks: int, k_blocks: int):
  """One (block_m pixels) × (block_f output channels) tile of the separable conv."""
  pid = pl.program_id(0)
  # Output-channel blocks vary fastest, so the tiles that reuse one input tile run together.
  f, m = pid % f_blocks, pid // f_blocks
  base = m * block_m + row + 1   # x_ref starts row + 1 pixels before the first output pixel.

  def k_step(k, acc):
    k0 = pl.multiple_of(k * block_k, block_k)
    depthwise = jnp.zeros((block_m, block_k), jnp.float32)
    for dy in range(3):
      for dx in range(3):
        tap = x_ref[pl.ds(base + (dy - 1) * row + dx - 1, block_m), pl.ds(k0, block_k)]
        depthwise += tap.astype(jnp.float32) * dw_ref[dy * 3 + dx, pl.ds(k0, block_k)][None, :]
    pointwise = pw_ref[pl.ds(k0, block_k), pl.ds(f * block_f, block_f)]
    return acc + jnp.dot(depthwise.astype(pointwise.dtype), pointwise,
                         preferred_element_type=jnp.float32)

  acc = lax.fori_loop(0, k_blocks, k_step, jnp.zeros((block_m, block_f), jnp.float32))
  y_ref[pl.ds(m * block_m, block_m), pl.ds(f * block_f, block_f)] = acc.astype(y_ref.dtype)


def fused_separable_conv(x: jax.Array, depthwise_kernel: jax.Array, pointwise_kernel: jax.Array,
                         *, block_m: int = 64, block_k: int = 32, block_f: int = 128,
                         num_warps: int = 4, interpret: bool = False) -> jax.Array:
  """Pointwise(depthwise(x)) for NHWC `x`, kernels (3, 3, 1, C) and (1, 1, C, F), stride 1, SAME.

  Equals XLA's two convs up to float rounding: the depthwise output is
  accumulated in float32 and rounded to the pointwise kernel's dtype before
  the matrix product, as XLA's separate convs round it when they store it.
  """
  n, h, w, _ = x.shape
  blocks = dict(block_m=block_m, block_k=block_k, block_f=block_f)
  y = fused_kernel_call(*kernel_layout(x, depthwise_kernel, pointwise_kernel, **blocks),
                        row=w + 2, num_warps=num_warps, interpret=interpret, **blocks)
  pixels = n * (h + 2) * (w + 2)
  return y[:pixels].reshape(n, h + 2, w + 2, -1)[:, 1:-1, 1:-1, :pointwise_kernel.shape[-1]]


def kernel_layout(x: jax.Array, depthwise_kernel: jax.Array, pointwise_kernel: jax.Array, *,
                  block_m: int, block_k: int, block_f: int) -> tuple[jax.Array, ...]:
  """The kernel's operands: padded, flattened input (with margins), (9, C') and (C', F') kernels."""
  n, h, w, c = x.shape
  features = pointwise_kernel.shape[-1]
  row = w + 2
  pixels = n * (h + 2) * row
  m_total = _round_up(pixels, block_m)
  c_pad, f_pad = _round_up(c, block_k), _round_up(features, block_f)
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, c_pad - c))).reshape(pixels, c_pad)
  # Margins of row + 1 pixels keep every tap of every tile inside the array.
  xp = jnp.pad(xp, ((row + 1, m_total - pixels + row + 1), (0, 0)))
  dw = jnp.pad(depthwise_kernel.reshape(9, c), ((0, 0), (0, c_pad - c))).astype(jnp.float32)
  pw = jnp.pad(pointwise_kernel.reshape(c, features), ((0, c_pad - c), (0, f_pad - features)))
  return xp, dw, pw


def fused_kernel_call(xp: jax.Array, dw: jax.Array, pw: jax.Array, *, row: int, block_m: int,
                      block_k: int, block_f: int, num_warps: int = 4,
                      interpret: bool = False) -> jax.Array:
  """The Pallas kernel alone, on `kernel_layout`'s operands: (M', F') outputs, padding pixels too."""
  m_total = xp.shape[0] - 2 * (row + 1)
  f_blocks = pw.shape[1] // block_f
  kernel = functools.partial(_kernel, row=row, block_m=block_m, block_k=block_k,
                             block_f=block_f, f_blocks=f_blocks, k_blocks=pw.shape[0] // block_k)
  compiler_params = None
  if not interpret:
    from jax.experimental.pallas import triton as plt
    compiler_params = plt.CompilerParams(num_warps=num_warps)
  return pl.pallas_call(kernel, grid=(f_blocks * (m_total // block_m),),
                        out_shape=jax.ShapeDtypeStruct((m_total, pw.shape[1]), xp.dtype),
                        compiler_params=compiler_params, interpret=interpret)(xp, dw, pw)


def xla_separable_conv(x: jax.Array, depthwise_kernel: jax.Array,
                       pointwise_kernel: jax.Array) -> jax.Array:
  """The reference: XLA's grouped conv, then its 1×1 conv (what `depthwise_impl='xla'` runs)."""
  numbers = ('NHWC', 'HWIO', 'NHWC')
  y = lax.conv_general_dilated(x, depthwise_kernel, (1, 1), 'SAME', dimension_numbers=numbers,
                               feature_group_count=x.shape[-1])
  return lax.conv_general_dilated(y, pointwise_kernel, (1, 1), 'SAME', dimension_numbers=numbers)


def _one_line(error: Exception) -> str:
  first = next((line for line in str(error).splitlines() if line.strip()), '')
  return f'{type(error).__name__}: {first[:300]}'


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--dtype', default='bfloat16', choices=['bfloat16', 'float32'])
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument('--blocks', action='append', default=None,
                      help='block_m,block_k,block_f[,num_warps] (powers of two); repeat the '
                           'flag to compare several (default 64,32,128,4)')
  args = parser.parse_args(argv)
  dtype = jnp.dtype(args.dtype)
  interpret = jax.default_backend() == 'cpu'
  configs = [tuple(map(int, (b + ',4').split(',')[:4])) for b in args.blocks or ['64,32,128']]
  reference = jax.jit(xla_separable_conv)
  print(f'{jax.devices()[0].device_kind}, jax {jax.__version__}, batch {args.batch}, {dtype}'
        + (' (interpreter: values only)' if interpret else ''))
  print('"whole": padding, kernel and crop, what a model would run; "kernel": the Pallas '
        'call alone on operands already in its layout.')
  print('| blocks (m, k, f, warps) | H=W | C | F | count | XLA ms | whole ms | kernel ms '
        '| XLA ÷ whole | XLA ÷ kernel | relative error |')
  print('|---|---|---|---|---|---|---|---|---|---|---|')
  shapes = []
  for i, (size, c, features, count) in enumerate(XCEPTION_SEPARABLE):
    keys = jax.random.split(jax.random.PRNGKey(i), 3)
    x = jax.random.normal(keys[0], (args.batch, size, size, c), dtype)
    dw = (jax.random.normal(keys[1], (3, 3, 1, c)) / 3).astype(dtype)
    pw = (jax.random.normal(keys[2], (1, 1, c, features)) / c**0.5).astype(dtype)
    exact = xla_separable_conv(*(a.astype(jnp.float32) for a in (x, dw, pw)))
    xla_ms = 1e3 * median_seconds(lambda: reference(x, dw, pw), args.repeats)
    shapes.append((size, c, features, count, x, dw, pw, exact, xla_ms))
  for block_m, block_k, block_f, num_warps in configs:
    blocks = dict(block_m=block_m, block_k=block_k, block_f=block_f)
    whole = jax.jit(functools.partial(fused_separable_conv, num_warps=num_warps,
                                      interpret=interpret, **blocks))
    totals = [0.0, 0.0, 0.0]
    name = f'{block_m}, {block_k}, {block_f}, {num_warps}'
    try:
      for size, c, features, count, x, dw, pw, exact, xla_ms in shapes:
        error = float(jnp.linalg.norm(whole(x, dw, pw).astype(jnp.float32) - exact)
                      / jnp.linalg.norm(exact))
        operands = kernel_layout(x, dw, pw, **blocks)
        kernel = jax.jit(functools.partial(fused_kernel_call, row=size + 2, num_warps=num_warps,
                                           interpret=interpret, **blocks))
        whole_ms = 1e3 * median_seconds(lambda: whole(x, dw, pw), args.repeats)
        kernel_ms = 1e3 * median_seconds(lambda: kernel(*operands), args.repeats)
        for j, ms in enumerate((xla_ms, whole_ms, kernel_ms)):
          totals[j] += count * ms
        print(f'| {name} | {size} | {c} | {features} | {count} | {xla_ms:.3f} | {whole_ms:.3f} '
              f'| {kernel_ms:.3f} | {xla_ms / whole_ms:.2f}× | {xla_ms / kernel_ms:.2f}× '
              f'| {error:.1e} |', flush=True)
    except Exception as error:   # One failing configuration must not hide the others.
      print(f'| {name} | failed: {_one_line(error)} |||||||||', flush=True)
      continue
    print(f'| {name} | all, weighted by count | | | | {totals[0]:.2f} | {totals[1]:.2f} '
          f'| {totals[2]:.2f} | {totals[0] / totals[1]:.2f}× | {totals[0] / totals[2]:.2f}× | |',
          flush=True)


if __name__ == '__main__':
  main()
