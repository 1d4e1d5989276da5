"""The two ceilings of a roofline, measured on JAX's default device.

    python -m benchmarks.device_ceilings [--matmul=8192] [--copy-mib=4096]

Memory: an elementwise pass over a large bfloat16 array (bytes read plus
bytes written, per second). Compute: a square bfloat16 matrix product on
random data (2·n³ FLOP per product). Each is the median of `--repeats` runs
after one warm-up. The last line is the two numbers as the flags
`benchmarks.throughput` takes (`--peak-tflops=... --peak-tbps=...`), so a
roofline can be drawn against what the device does rather than its data sheet.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Callable

import jax
import jax.numpy as jnp

from benchmarks.throughput import time_steps


def median_seconds(fn: Callable[[], jax.Array], repeats: int) -> float:
  """Median wall time of `fn()` until its result is ready, after one warm-up call."""
  timed = time_steps(lambda: jax.block_until_ready(fn()), warmup=1, repeats=repeats)
  return statistics.median(timed['times'])


def copy_tbps(mib: int, repeats: int) -> float:
  """TB/s of reading and writing a bfloat16 array of `mib` MiB once each."""
  x = jax.random.normal(jax.random.PRNGKey(0), (mib * 2**19,), jnp.bfloat16)
  seconds = median_seconds(lambda: _scale(x), repeats)
  return 2 * x.nbytes / seconds / 1e12


def matmul_tflops(n: int, repeats: int) -> float:
  """TFLOP/s of an n×n by n×n bfloat16 matrix product on random data."""
  a, b = jax.random.normal(jax.random.PRNGKey(1), (2, n, n), jnp.bfloat16)
  seconds = median_seconds(lambda: _matmul(a, b), repeats)
  return 2 * n**3 / seconds / 1e12


@jax.jit
def _scale(x):
  return x * jnp.bfloat16(1.5)


@jax.jit
def _matmul(a, b):
  return a @ b


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--matmul', type=int, default=8192, help='matrix size n')
  parser.add_argument('--copy-mib', type=int, default=4096, help='array size in MiB')
  parser.add_argument('--repeats', type=int, default=10)
  args = parser.parse_args(argv)
  device = jax.devices()[0]
  tbps = copy_tbps(args.copy_mib, args.repeats)
  tflops = matmul_tflops(args.matmul, args.repeats)
  print(f'{device.device_kind}: bfloat16 {args.matmul}³ matrix product {tflops:.1f} TFLOP/s; '
        f'{args.copy_mib} MiB elementwise pass {tbps:.3f} TB/s (read + written)')
  print(f'--peak-tflops={tflops:.4g} --peak-tbps={tbps:.4g}')


if __name__ == '__main__':
  main()
