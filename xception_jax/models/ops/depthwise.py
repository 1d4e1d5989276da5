"""Depthwise convs as summed shifted slices ('shifted'), gradients written out.

XLA lowers a depthwise conv (`feature_group_count` = channels) to a grouped
convolution, 10-25× slower on CPU than its nine multiply-adds per output, the
backward pass especially.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from xception_jax.models.ops.windows import (Padding, add_tuples, crop_hw, explicit_pads, pad_hw,
                                             scatter_windows, stored, windows)


N_GROUP = 8   # Images summed together in the kernel gradient's first reduction.


def _tap_sums(xp: jnp.ndarray, g: jnp.ndarray, window, strides) -> jnp.ndarray:
  """Σ over N, H, W of each tap's input window times `g`: (kh, kw, C), in float32 or wider."""
  acc = jnp.promote_types(g.dtype, jnp.float32)
  g = g.astype(acc)
  products = tuple(tap.astype(acc) * g for _, _, tap in windows(xp, window, strides))
  # One variadic reduce reads xp and g once for all taps, over N first (its
  # partial sums keep the contiguous H, W, C layout), then over H and W. Nine
  # separate reductions materialise nine shifted copies of the input and run
  # 3-5× slower; reducing N and H together is ~10% slower over the whole model.
  # Over N in groups of N_GROUP: each partial sum reads one element of every
  # image, a whole map apart; over 32 images that ran 10× slower per image
  # than over 8 (Xception's training step at batch 32: 1.19× faster grouped).
  n = products[0].shape[0]
  batch_axis = 0
  if n > N_GROUP and n % N_GROUP == 0:
    products = tuple(p.reshape(n // N_GROUP, N_GROUP, *p.shape[1:]) for p in products)
    batch_axis = 1
  zeros = (jnp.array(0, acc),) * len(products)
  maps = lax.reduce(products, zeros, add_tuples, (batch_axis,))
  rest = tuple(range(maps[0].ndim - 1))   # The groups (if any), H and W.
  return jnp.stack([m.sum(rest) for m in maps]).reshape(*window, -1)


def _tap_products_sum(xp: jnp.ndarray, kernel: jnp.ndarray, strides, acc) -> jnp.ndarray:
  """Σ over taps of each window of the padded `xp` times that tap's (kh, kw, 1, C) kernel row."""
  y = None
  for i, j, tap in windows(xp, kernel.shape[:2], strides):
    term = tap.astype(acc) * kernel[i, j, 0].astype(acc)
    y = term if y is None else y + term
  return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _shifted_depthwise(x, kernel, strides, pads, out_dtype):
  acc = jnp.promote_types(out_dtype, jnp.float32)
  return _tap_products_sum(pad_hw(x, pads, 0), kernel, strides, acc).astype(out_dtype)


def _shifted_depthwise_fwd(x, kernel, strides, pads, out_dtype):
  return _shifted_depthwise(x, kernel, strides, pads, out_dtype), (x, kernel)


def _shifted_depthwise_bwd(strides, pads, out_dtype, residuals, g):
  # Written out rather than left to autodiff: autodiff's residuals are the nine
  # shifted slices, which XLA then materialises.
  x, kernel = residuals
  window = kernel.shape[:2]
  xp = pad_hw(x, pads, 0)
  acc = jnp.promote_types(g.dtype, jnp.float32)
  dkernel = _tap_sums(xp, g, window, strides)[:, :, None, :].astype(kernel.dtype)
  if tuple(strides) == (1, 1):
    # The input gradient of a stride-1 depthwise conv is the same conv of the
    # padded output gradient with the kernel flipped: nine shifted reads of one
    # stored array, 3-4× faster in XLA's CPU loops than summing nine padded
    # arrays, whose every element tests nine pad bounds.
    (top, bottom), (left, right) = pads
    (kh, kw) = window
    gp = stored(pad_hw(g, ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)), 0))
    dx = _tap_products_sum(gp, kernel[::-1, ::-1], (1, 1), acc).astype(x.dtype)
    return dx, dkernel
  values = {(i, j): g.astype(acc) * kernel[i, j, 0].astype(acc)
            for i in range(window[0]) for j in range(window[1])}
  dxp = scatter_windows(values, strides, xp.shape[1:3])
  dx = crop_hw(dxp, pads).astype(x.dtype)
  return dx, dkernel


_shifted_depthwise.defvjp(_shifted_depthwise_fwd, _shifted_depthwise_bwd)


def shifted_depthwise(x: jnp.ndarray, kernel: jnp.ndarray, strides: Sequence[int],
                      padding: Padding,
                      preferred_element_type: Optional[jnp.dtype] = None) -> jnp.ndarray:
  """Depthwise conv of NHWC `x` with an HWIO kernel (kh, kw, 1, C) as summed shifted slices.

  Equals `lax.conv_general_dilated(..., feature_group_count=C)` up to float
  rounding (the sum runs in tap order), gradients included. Products and
  sums are float32 for inputs of lower precision; the result has `x`'s dtype
  unless `preferred_element_type` says otherwise.
  """
  pads = explicit_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
  out_dtype = jnp.dtype(preferred_element_type or x.dtype)
  return _shifted_depthwise(x, kernel, tuple(strides), pads, out_dtype)
