"""Max pooling as the maximum of shifted windows ('shifted'), gradient included.

XLA's reduce-window runs 5-9× slower on CPU, and its gradient becomes an
argmax reduce-window and a scatter. (Average pooling stays XLA's: summed
shifted windows were slower.)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from xception_jax.models.ops.windows import (Padding, crop_hw, explicit_pads, pad_hw,
                                             scatter_windows, stored, windows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def shifted_max_pool(x: jnp.ndarray, window: tuple[int, int], strides: tuple[int, int],
                     padding: Padding) -> jnp.ndarray:
  """Max pool of NHWC `x` over `window`, equal to `nn.max_pool` in value and gradient.

  The forward pass is the maximum of shifted slices in one loop, stored
  (`stored`) so that consumers reading neighbours, such as a depthwise conv,
  do not compute it again. The gradient goes to the first maximal element of
  each window in row-major order, as XLA's select-and-scatter does, but is
  computed from shifted windows in two loops.
  """
  # The backward pass finds each window's maximum again from `x` rather than
  # comparing with the forward output: XLA may compute `x` in two fusions with
  # different rounding, and an equality test would then miss the maximum.
  pads = explicit_pads(x.shape[1:3], window, strides, padding)
  y = None
  for _, _, tap in windows(pad_hw(x, pads, -jnp.inf), window, strides):
    y = tap if y is None else jnp.maximum(y, tap)
  return stored(y)


def _max_pool_fwd(x, window, strides, padding):
  return shifted_max_pool(x, window, strides, padding), x


def _max_pool_bwd(window, strides, padding, x, g):
  pads = explicit_pads(x.shape[1:3], window, strides, padding)
  xp = pad_hw(x, pads, -jnp.inf)
  taps = list(windows(xp, window, strides))
  index_dtype = jnp.int8 if len(taps) <= jnp.iinfo(jnp.int8).max else jnp.int32
  best, first = taps[0][2], jnp.zeros(g.shape, index_dtype)
  for t, (_, _, tap) in enumerate(taps[1:], 1):
    later = tap > best          # strictly greater: ties stay with the earlier tap
    best = jnp.where(later, tap, best)
    first = jnp.where(later, jnp.array(t, index_dtype), first)
  # Each input element reads the winning tap of up to ⌈kh/sh⌉·⌈kw/sw⌉ windows
  # (4 for 3×3 stride 2); stored once, the window maxima are not searched again
  # for every read (a 3×3/2 pool's gradient in half the time: benchmarks/RESULTS.md).
  first = stored(first)
  zero = jnp.array(0, g.dtype)
  values = {(i, j): jnp.where(first == t, g, zero) for t, (i, j, _) in enumerate(taps)}
  dxp = scatter_windows(values, strides, xp.shape[1:3])
  return (crop_hw(dxp, pads),)


shifted_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
