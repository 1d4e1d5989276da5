"""1×1 convs as one matrix product ('dot'), k×k convs over im2col patches, and the dispatch.

Every family also has the 'onednn' form: the conv in oneDNN's kernels (`ops.onednn`).

A conv form has `lax.conv_general_dilated`'s signature and is passed to
`nn.Conv(conv_general_dilated=...)`, so module names and kernel shapes stay
nn.Conv's. Calls a form does not cover (other layouts, dilation, groups other
than depthwise, depth multipliers) go to XLA unchanged.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from xception_jax.models.ops import onednn
from xception_jax.models.ops.depthwise import shifted_depthwise
from xception_jax.models.ops.windows import (Padding, Pads, add_tuples, crop_hw, explicit_pads,
                                             out_hw, pad_hw, scatter_windows, windows)

ConvFn = Callable[..., jnp.ndarray]
_NHWC = ('NHWC', 'HWIO', 'NHWC')

# Larger kernels stay XLA's under conv 'im2col': a 5×5 conv took 2.6× as long
# as XLA's with it (benchmarks/conv_forms.py).
IM2COL_MAX_TAPS = 9


def pointwise_dot(x: jnp.ndarray, kernel: jnp.ndarray, strides: Sequence[int],
                  precision=None, preferred_element_type=None) -> jnp.ndarray:
  """A 1×1 conv of NHWC `x` with kernel (1, 1, C, F) as one matrix product (no padding)."""
  if any(s != 1 for s in strides):
    x = x[:, ::strides[0], ::strides[1], :]
  # As a 2-D product: contracting the 4-D form over N, H, W for the kernel
  # gradient makes XLA transpose the output gradient first.
  y = lax.dot_general(x.reshape(-1, x.shape[-1]), kernel[0, 0], (((1,), (0,)), ((), ())),
                      precision=precision, preferred_element_type=preferred_element_type)
  return y.reshape(*x.shape[:3], y.shape[-1])


def _patches(x: jnp.ndarray, window: Sequence[int], strides: Sequence[int],
             pads: Pads) -> jnp.ndarray:
  """(N·out_h·out_w, kh·kw·C): every output position's input window, taps in HWIO order."""
  taps = [tap for _, _, tap in windows(pad_hw(x, pads, 0), window, strides)]
  patches = jnp.concatenate(taps, axis=-1)
  return patches.reshape(-1, patches.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _im2col_conv(x, kernel, strides, pads, precision, out_dtype):
  kh, kw, cin, cout = kernel.shape
  out_h, out_w = out_hw(add_tuples(x.shape[1:3], tuple(map(sum, pads))), (kh, kw), strides)
  y = lax.dot_general(_patches(x, (kh, kw), strides, pads), kernel.reshape(-1, cout),
                      (((1,), (0,)), ((), ())), precision=precision,
                      preferred_element_type=out_dtype)
  return y.reshape(x.shape[0], out_h, out_w, cout)


def _im2col_conv_fwd(x, kernel, strides, pads, precision, out_dtype):
  # Keeps x, not the patches (kh·kw times larger): the backward pass cuts them again.
  return _im2col_conv(x, kernel, strides, pads, precision, out_dtype), (x, kernel)


def _im2col_conv_bwd(strides, pads, precision, out_dtype, residuals, g):
  x, kernel = residuals
  kh, kw, cin, cout = kernel.shape
  g2 = g.reshape(-1, cout)
  dkernel = lax.dot_general(_patches(x, (kh, kw), strides, pads), g2.astype(x.dtype),
                            (((0,), (0,)), ((), ())), precision=precision,
                            preferred_element_type=jnp.promote_types(kernel.dtype, jnp.float32))
  dpatches = lax.dot_general(g2, kernel.reshape(-1, cout).astype(g.dtype),
                             (((1,), (1,)), ((), ())), precision=precision)
  dpatches = dpatches.reshape(*g.shape[:3], kh * kw * cin)
  values = {(i, j): dpatches[..., (i * kw + j) * cin:(i * kw + j + 1) * cin]
            for i in range(kh) for j in range(kw)}
  padded_hw = add_tuples(x.shape[1:3], tuple(map(sum, pads)))
  dx = crop_hw(scatter_windows(values, strides, padded_hw), pads)
  return dx.astype(x.dtype), dkernel.reshape(kernel.shape).astype(kernel.dtype)


_im2col_conv.defvjp(_im2col_conv_fwd, _im2col_conv_bwd)


def im2col_conv(x: jnp.ndarray, kernel: jnp.ndarray, strides: Sequence[int], padding: Padding,
                precision=None, preferred_element_type=None) -> jnp.ndarray:
  """An NHWC conv with an HWIO kernel as one matrix product over the input's patches.

  Equals `lax.conv_general_dilated` (no dilation, no groups) up to float
  rounding, gradients included; the kernel gradient is the patches'
  transpose times the output gradient, the input gradient is the output
  gradient times the kernel's transpose, summed back window by window.
  """
  pads = explicit_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
  out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(x.dtype, kernel.dtype))
  return _im2col_conv(x, kernel, tuple(strides), pads, precision, out_dtype)


def _plain_2d(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, batch_group_count):
  """True for a 2-D NHWC/HWIO conv without dilation or batch groups."""
  if lhs.ndim != 4 or rhs.ndim != 4 or batch_group_count != 1:
    return False
  if dimension_numbers is not None and not isinstance(dimension_numbers,
                                                      lax.ConvDimensionNumbers):
    dimension_numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  return (dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
          and all(d == 1 for d in lhs_dilation or ()) and all(d == 1 for d in rhs_dilation or ()))


def _dispatching_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                      dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                      precision=None, preferred_element_type=None, *, depthwise: str,
                      pointwise: str, conv: str, **kwargs) -> jnp.ndarray:
  """`lax.conv_general_dilated`, with depthwise, 1×1 and other convs in the chosen forms."""
  if not kwargs and _plain_2d(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                              batch_group_count):
    channels = lhs.shape[-1]
    pads = explicit_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    is_depthwise = feature_group_count == channels and rhs.shape[2:] == (1, channels)
    is_pointwise = feature_group_count == 1 and rhs.shape[:2] == (1, 1) and not any(map(any, pads))
    form = depthwise if is_depthwise else pointwise if is_pointwise else conv
    if (form == 'onednn' and (is_depthwise or feature_group_count == 1)
        and onednn.supports(lhs, rhs, preferred_element_type)):
      return onednn.conv(lhs, rhs, window_strides, pads, feature_group_count)
    if depthwise == 'shifted' and is_depthwise:
      return shifted_depthwise(lhs, rhs, window_strides, padding, preferred_element_type)
    if pointwise == 'dot' and is_pointwise:
      return pointwise_dot(lhs, rhs, window_strides, precision, preferred_element_type)
    if (conv == 'im2col' and feature_group_count == 1 and rhs.shape[:2] != (1, 1)
        and rhs.shape[0] * rhs.shape[1] <= IM2COL_MAX_TAPS):
      return im2col_conv(lhs, rhs, window_strides, padding, precision, preferred_element_type)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                  rhs_dilation, dimension_numbers, feature_group_count,
                                  batch_group_count, precision, preferred_element_type,
                                  **kwargs)


@functools.lru_cache(maxsize=None)
def _conv_fn(depthwise: str, pointwise: str, conv: str) -> ConvFn:
  if depthwise == pointwise == conv == 'xla':
    return lax.conv_general_dilated
  return functools.partial(_dispatching_conv, depthwise=depthwise, pointwise=pointwise,
                           conv=conv)


def conv_general_dilated_fn(depthwise: str = 'xla', pointwise: str = 'xla',
                            conv: str = 'xla') -> ConvFn:
  """A `lax.conv_general_dilated` replacement for `nn.Conv(conv_general_dilated=...)`.

  Depthwise convs are computed as `depthwise` says ('xla', 'shifted', 'onednn'),
  1×1 convs as `pointwise` ('xla', 'dot', 'onednn'), other ungrouped 2-D convs as
  `conv` ('xla', 'im2col', 'onednn'), anything else (and, for 'onednn', anything
  but float32) by XLA; 'xla' for all three returns
  `lax.conv_general_dilated` itself. The same arguments return the same
  function object (so jitted programs are shared).
  """
  return _conv_fn(depthwise, pointwise, conv)
