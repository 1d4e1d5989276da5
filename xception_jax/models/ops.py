"""Faster forms of four operations, as drop-in replacements for XLA's.

XLA computes them with generic kernels that are slow on CPU for the shapes
of these models (measurements: benchmarks/RESULTS.md):

* depthwise convs (`feature_group_count` = channels) become grouped
  convolutions, 10-25× slower than their 9 multiply-adds per output, the
  backward pass especially (on CUDA as well: jax-ml/jax issue 13800);
* 1×1 convs, whose kernel gradient becomes a convolution with a window as
  large as the feature map, up to 8× slower than the matrix product it is;
* k×k convs, whose gradients XLA's default CPU options give to YNNPACK,
  1.3-4.7× slower than XLA's own convs or one matrix product over the input's
  patches (`compiler_options()` turns that off; 'im2col' works without it);
* max pooling, whose reduce-window runs 5-9× slower than the maximum of
  shifted slices and whose gradient becomes an argmax reduce-window and a
  scatter;
* batch norm, whose autodiff gradient materialises extra activation copies.

The replacements keep every parameter: a conv implementation has the
signature of `lax.conv_general_dilated` and is passed to `nn.Conv` as
`conv_general_dilated=`, so module names and kernel shapes stay nn.Conv's and
checkpoints and converted weights are interchangeable. Calls a form does not
cover (other layouts, dilation, grouped convs, depth multipliers) go to XLA
unchanged.

Implementations, chosen per kind (`IMPLS`):
  depthwise  'xla': lax.conv_general_dilated, the reference.
             'shifted': kh·kw strided slices of the padded input, each scaled
             by one kernel tap and summed in one fused loop; at stride 1 the
             input gradient is the same form over the stored, padded output
             gradient with the kernel flipped.
  pointwise  'xla': lax.conv_general_dilated. 'dot': one matrix product over
             the channel axis (a strided 1×1 conv subsamples first).
  conv       (every other ungrouped conv) 'xla': lax.conv_general_dilated.
             'im2col': the kh·kw shifted windows concatenated along channels
             and multiplied by the kernel as one (kh·kw·Cin, Cout) matrix;
             kernels of up to 9 taps only (3×3, 1×7, 7×1, ...): with 25
             taps, concatenating the windows costs more than it saves.
             1.7-3× faster than XLA's stem convs under XLA's default CPU
             options, slower under `compiler_options()`; so not 'auto'.
  pool       'xla': flax's max_pool. 'shifted': the maximum of shifted
             windows, stored once; the gradient, computed from shifted
             windows with each window's winning tap stored once, goes to the
             first maximal element of each window as XLA's select-and-scatter
             does. (Average pooling stays XLA's reduce-window: summed shifted
             windows were slower.)
  norm       'xla': flax's nn.BatchNorm. 'fused': layers.FusedBatchNorm, whose
             training-mode gradient is written out (`batch_norm_train`).
'auto' picks per backend (`AUTO_IMPLS`). `compiler_options()` are XLA options
that the jitted steps of these models pass to the compiler.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

from xception_jax.models import registry

ConvFn = Callable[..., jnp.ndarray]
Padding = Union[str, Sequence[tuple[int, int]]]
Pads = tuple[tuple[int, int], tuple[int, int]]

IMPLS = {'depthwise': ('auto', 'xla', 'shifted'),
         'pointwise': ('auto', 'xla', 'dot'),
         'conv': ('auto', 'xla', 'im2col'),
         'pool': ('auto', 'xla', 'shifted'),
         'norm': ('auto', 'xla', 'fused')}

# What 'auto' means per backend, from measurements (benchmarks/RESULTS.md).
# CPU (2 cores): k×k convs stay XLA's: with `compiler_options()` XLA's own
# convs beat 'im2col', which helps only where those options are not used.
# GPU (H200, bfloat16 Xception training at batch 128): XLA's convs, cuDNN's
# grouped conv included, ran 1.9× as fast as the 'shifted' depthwise form;
# the fused batch norm 1.05× as fast as flax's (2,458 against 2,331 images/s).
# TPU: unmeasured, so XLA's forms.
AUTO_IMPLS = {'cpu': {'depthwise': 'shifted', 'pointwise': 'dot', 'pool': 'shifted',
                      'norm': 'fused'},
              'gpu': {'depthwise': 'xla', 'pointwise': 'xla', 'pool': 'xla', 'norm': 'fused'}}

# Per backend, measured like AUTO_IMPLS (benchmarks/RESULTS.md). CPU: XLA
# hands convolutions to its YNNPACK library by default, whose k×k-conv
# gradients run 1.3-4.7× slower than XLA's own (Eigen) convs
# (benchmarks/conv_forms.py); matrix products and reductions stay with
# YNNPACK. XLA's memory-optimised scheduler trains Xception and the
# Inception models with 12-43 % less activation memory at 0.98-1.09× the speed.
# (`xla_cpu_scheduler_type`: XLA ignores the older
# `xla_cpu_enable_concurrency_optimized_scheduler` as a compiler option.)
COMPILER_OPTIONS = {'cpu': {
    'xla_cpu_experimental_ynn_fusion_type':
        'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE',
    'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}}
# Per backend and registered model name, options that replace those above.
# Inception-ResNet-v2 trains 1.10-1.15× faster when YNNPACK also fuses the
# elementwise work around its matrix products (Inception-V3 and v4 gained
# nothing, Xception slowed to 0.75×), and at batch 8 1.04-1.11× faster with
# XLA's concurrency-optimised scheduler, for 10 % more activation memory
# (within noise at batch 16 and 32; the other models run as fast or faster
# with the memory-optimised one).
MODEL_COMPILER_OPTIONS = {'cpu': {'inception_resnet_v2': {
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE',
    'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED'}}}


def compiler_options(backend: Optional[str] = None, *,
                     model: Any = None) -> dict[str, Any]:
  """XLA compiler options for jitting `model` (a registry name or module) on `backend`.

  `backend` defaults to JAX's default. Pass them as
  `jax.jit(..., compiler_options=ops.compiler_options(model=model))`. Without
  `model`, the options common to every model. Options that this XLA does not
  know (they are experimental) are left out, with a warning, rather than
  failing the compile.
  """
  name = model if isinstance(model, str) or model is None else registry.model_name(model)
  return dict(_checked_options(backend or jax.default_backend(), name))


@functools.lru_cache(maxsize=None)
def _checked_options(backend: str, model_name: Optional[str]) -> dict[str, Any]:
  options = dict(COMPILER_OPTIONS.get(backend, {}),
                 **MODEL_COMPILER_OPTIONS.get(backend, {}).get(model_name, {}))
  return {name: value for name, value in options.items()
          if _accepted(backend, name, value)}


@functools.lru_cache(maxsize=None)
def _accepted(backend: str, name: str, value: Any) -> bool:
  """Whether XLA on `backend` compiles with the option; a warning if not."""
  try:
    jax.jit(lambda x: x + 1, backend=backend, compiler_options={name: value}).lower(
        jnp.zeros(())).compile()
  except Exception as e:   # The XLA error type differs between versions.
    logging.warning('XLA rejected the compiler option %s=%r (%s); compiling without it.',
                    name, value, str(e).splitlines()[0])
    return False
  return True


# Larger kernels stay XLA's under conv 'im2col': a 5×5 conv took 2.6× as long
# as XLA's with it (benchmarks/conv_forms.py).
IM2COL_MAX_TAPS = 9

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def resolve_impl(kind: str, impl: str, backend: Optional[str] = None) -> str:
  """The concrete implementation of `kind` that `impl` names ('auto': per `backend`).

  `backend` defaults to JAX's default backend. Unknown names raise a ValueError.
  """
  if impl not in IMPLS[kind]:
    raise ValueError(f'Unknown {kind}_impl {impl!r}; choose one of {IMPLS[kind]}.')
  if impl != 'auto':
    return impl
  return AUTO_IMPLS.get(backend or jax.default_backend(), {}).get(kind, 'xla')


def explicit_pads(hw: Sequence[int], window: Sequence[int], strides: Sequence[int],
                  padding: Padding) -> Pads:
  """((top, bottom), (left, right)) for 'SAME', 'VALID' or explicit padding."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(tuple(hw), tuple(window), tuple(strides), padding)
  (top, bottom), (left, right) = padding
  return (int(top), int(bottom)), (int(left), int(right))


def _pad_hw(x: jnp.ndarray, pads: Pads, value) -> jnp.ndarray:
  (top, bottom), (left, right) = pads
  return lax.pad(x, jnp.array(value, x.dtype),
                 ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))


def _crop_hw(xp: jnp.ndarray, pads: Pads) -> jnp.ndarray:
  """The transpose of `_pad_hw`: `xp` without its padding."""
  (top, bottom), (left, right) = pads
  return xp[:, top:xp.shape[1] - bottom, left:xp.shape[2] - right]


def _out_hw(padded_hw, window, strides) -> tuple[int, int]:
  return tuple((n - k) // s + 1 for n, k, s in zip(padded_hw, window, strides))


def windows(xp: jnp.ndarray, window: Sequence[int],
            strides: Sequence[int]) -> Iterator[tuple[int, int, jnp.ndarray]]:
  """(i, j, xp[:, i::sh, j::sw, :] cut to the output size) for every tap of the window."""
  (kh, kw), (sh, sw) = window, strides
  out_h, out_w = _out_hw(xp.shape[1:3], window, strides)
  for i in range(kh):
    for j in range(kw):
      yield i, j, lax.slice(xp, (0, i, j, 0),
                            (xp.shape[0], i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1,
                             xp.shape[3]), (1, sh, sw, 1))


def scatter_windows(values: dict[tuple[int, int], jnp.ndarray], strides: Sequence[int],
                    padded_hw: Sequence[int]) -> jnp.ndarray:
  """The transpose of `windows`: each tap's values added where that tap read its input.

  `values` maps taps (i, j) to output-shaped arrays; the result has the padded
  input's shape. Strided windows are summed per stride phase with plain
  shifts and interleaved once, which XLA's CPU loops do much faster than
  interior padding.
  """
  (sh, sw), (hp, wp) = strides, padded_hw
  qh, qw = -(-hp // sh), -(-wp // sw)
  some = next(iter(values.values()))
  out_h, out_w = some.shape[1:3]
  zero = jnp.array(0, some.dtype)
  rows = []
  for pr in range(sh):
    row = []
    for pc in range(sw):
      phase = None
      for (i, j), v in values.items():
        if i % sh == pr and j % sw == pc:
          m, n = i // sh, j // sw
          v = lax.pad(v, zero, ((0, 0, 0), (m, qh - m - out_h, 0), (n, qw - n - out_w, 0),
                                (0, 0, 0)))
          phase = v if phase is None else phase + v
      row.append(jnp.zeros((some.shape[0], qh, qw, some.shape[3]), some.dtype)
                 if phase is None else phase)
    rows.append(row[0][:, :, :, None] if sw == 1 else jnp.stack(row, axis=3))
  out = rows[0][:, :, None] if sh == 1 else jnp.stack(rows, axis=2)   # N, qh, sh, qw, sw, C
  out = out.reshape(out.shape[0], qh * sh, qw * sw, out.shape[-1])
  return out[:, :hp, :wp]


def _add_tuples(a, b):
  return tuple(p + q for p, q in zip(a, b))


def _tap_sums(xp: jnp.ndarray, g: jnp.ndarray, window, strides) -> jnp.ndarray:
  """Σ over N, H, W of each tap's input window times `g`: (kh, kw, C), in float32 or wider."""
  acc = jnp.promote_types(g.dtype, jnp.float32)
  g = g.astype(acc)
  products = tuple(tap.astype(acc) * g for _, _, tap in windows(xp, window, strides))
  # One variadic reduce reads xp and g once for all taps, over N first (its
  # partial sums keep the contiguous H, W, C layout), then over H and W. Nine
  # separate reductions materialise nine shifted copies of the input and run
  # 3-5× slower; reducing N and H together is ~10% slower over the whole model.
  zeros = (jnp.array(0, acc),) * len(products)
  maps = lax.reduce(products, zeros, _add_tuples, (0,))
  return jnp.stack([m.sum((0, 1)) for m in maps]).reshape(*window, -1)


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
  return _tap_products_sum(_pad_hw(x, pads, 0), kernel, strides, acc).astype(out_dtype)


def _shifted_depthwise_fwd(x, kernel, strides, pads, out_dtype):
  return _shifted_depthwise(x, kernel, strides, pads, out_dtype), (x, kernel)


def _shifted_depthwise_bwd(strides, pads, out_dtype, residuals, g):
  # Written out rather than left to autodiff: autodiff's residuals are the nine
  # shifted slices, which XLA then materialises.
  x, kernel = residuals
  window = kernel.shape[:2]
  xp = _pad_hw(x, pads, 0)
  acc = jnp.promote_types(g.dtype, jnp.float32)
  dkernel = _tap_sums(xp, g, window, strides)[:, :, None, :].astype(kernel.dtype)
  if tuple(strides) == (1, 1):
    # The input gradient of a stride-1 depthwise conv is the same conv of the
    # padded output gradient with the kernel flipped: nine shifted reads of one
    # stored array, 3-4× faster in XLA's CPU loops than summing nine padded
    # arrays, whose every element tests nine pad bounds.
    (top, bottom), (left, right) = pads
    (kh, kw) = window
    gp = stored(_pad_hw(g, ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)), 0))
    dx = _tap_products_sum(gp, kernel[::-1, ::-1], (1, 1), acc).astype(x.dtype)
    return dx, dkernel
  values = {(i, j): g.astype(acc) * kernel[i, j, 0].astype(acc)
            for i in range(window[0]) for j in range(window[1])}
  dxp = scatter_windows(values, strides, xp.shape[1:3])
  dx = _crop_hw(dxp, pads).astype(x.dtype)
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
  taps = [tap for _, _, tap in windows(_pad_hw(x, pads, 0), window, strides)]
  patches = jnp.concatenate(taps, axis=-1)
  return patches.reshape(-1, patches.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _im2col_conv(x, kernel, strides, pads, precision, out_dtype):
  kh, kw, cin, cout = kernel.shape
  out_h, out_w = _out_hw(_add_tuples(x.shape[1:3], tuple(map(sum, pads))), (kh, kw), strides)
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
  padded_hw = _add_tuples(x.shape[1:3], tuple(map(sum, pads)))
  dx = _crop_hw(scatter_windows(values, strides, padded_hw), pads)
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
    if (depthwise == 'shifted' and feature_group_count == channels
        and rhs.shape[2:] == (1, channels)):
      return shifted_depthwise(lhs, rhs, window_strides, padding, preferred_element_type)
    if (pointwise == 'dot' and feature_group_count == 1 and rhs.shape[:2] == (1, 1)
        and explicit_pads(lhs.shape[1:3], (1, 1), window_strides, padding) == ((0, 0),) * 2):
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


def conv_general_dilated_fn(depthwise_impl: str = 'auto', pointwise_impl: str = 'auto',
                            conv_impl: str = 'auto') -> ConvFn:
  """A `lax.conv_general_dilated` replacement for `nn.Conv(conv_general_dilated=...)`.

  Depthwise convs use `depthwise_impl`, 1×1 convs `pointwise_impl`, other
  ungrouped 2-D convs `conv_impl`, anything else XLA's; 'xla' for all three
  returns `lax.conv_general_dilated` itself. The same arguments return the
  same function object.
  """
  depthwise = resolve_impl('depthwise', depthwise_impl)
  pointwise = resolve_impl('pointwise', pointwise_impl)
  if (depthwise, pointwise) == ('shifted', 'dot') and jax.default_backend() == 'gpu':
    _warn_once("depthwise_impl='shifted' with pointwise_impl='dot' made XLA's GPU compiler "
               "abort the process on whole models (jax 0.11.2, H200); on a GPU use 'auto'.")
  return _conv_fn(depthwise, pointwise, resolve_impl('conv', conv_impl))


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
  logging.warning(message)


@jax.custom_jvp
def stored(a: jnp.ndarray) -> jnp.ndarray:
  """`a` itself, computed once into memory rather than fused into each consumer.

  XLA's CPU fusion copies cheap elementwise producers into every consumer,
  recomputing them for each element a consumer reads; a consumer that reads
  neighbours (shifts, pads, strided interleaves) then repeats the producer's
  work several times over. Reduce-windows are never fused into consumers, so
  the identity written as one (the maximum of each element and a padded
  lowest value) makes XLA store the array. Its derivative is the identity.
  """
  lowest = (jnp.iinfo(a.dtype).min if jnp.issubdtype(a.dtype, jnp.integer)
            else -jnp.inf)
  out = lax.reduce_window(a[..., None], jnp.array(lowest, a.dtype), lax.max,
                          (1,) * a.ndim + (2,), (1,) * (a.ndim + 1),
                          ((0, 0),) * a.ndim + ((0, 1),))
  return out[..., 0]


@stored.defjvp
def _stored_jvp(primals, tangents):
  return stored(*primals), tangents[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def shifted_max_pool(x: jnp.ndarray, window: tuple[int, int], strides: tuple[int, int],
                     padding: Padding) -> jnp.ndarray:
  """Max pool of NHWC `x` over `window`, equal to `nn.max_pool` in value and gradient.

  The forward pass is the maximum of shifted slices in one loop, stored
  (`stored`) so that consumers reading neighbours, such as a depthwise conv,
  do not compute it again; XLA's reduce-window took 5-9× as long on CPU. The
  gradient goes to the first maximal element of each window in row-major
  order, as XLA's select-and-scatter does, but is computed from shifted
  windows in two loops.
  """
  # The backward pass finds each window's maximum again from `x` rather than
  # comparing with the forward output: XLA may compute `x` in two fusions with
  # different rounding, and an equality test would then miss the maximum.
  pads = explicit_pads(x.shape[1:3], window, strides, padding)
  y = None
  for _, _, tap in windows(_pad_hw(x, pads, -jnp.inf), window, strides):
    y = tap if y is None else jnp.maximum(y, tap)
  return stored(y)


def _max_pool_fwd(x, window, strides, padding):
  return shifted_max_pool(x, window, strides, padding), x


def _max_pool_bwd(window, strides, padding, x, g):
  pads = explicit_pads(x.shape[1:3], window, strides, padding)
  xp = _pad_hw(x, pads, -jnp.inf)
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
  return (_crop_hw(dxp, pads),)


shifted_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _channel_sums(*arrays: jnp.ndarray) -> tuple:
  """Per-channel (last axis) sums of each array."""
  # Separate sums: XLA's CPU library reductions take each in one fast pass,
  # while one variadic reduce over all rows runs in a slow generic loop.
  return tuple(a.reshape(-1, a.shape[-1]).sum(0) for a in arrays)


def _vary_like(value: jnp.ndarray, like: jnp.ndarray) -> jnp.ndarray:
  """`value` marked as varying over every manual (shard_map) axis that `like` varies over.

  A custom VJP must return cotangents typed like its inputs; broadcasting a
  replicated parameter explicitly before the call lets autodiff sum its
  per-device cotangents (pcast's transpose), as it does for nn.BatchNorm.
  """
  def varying(a):
    axis_type = getattr(jax.typeof(a), 'manual_axis_type', None)
    return frozenset(getattr(axis_type, 'varying', ()))
  missing = varying(like) - varying(value)
  return lax.pcast(value, tuple(sorted(missing)), to='varying') if missing else value


def batch_norm_train(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, epsilon: float,
                     axis_name: Optional[str] = None):
  """Training-mode batch norm over all axes but the last: (y, batch mean, batch variance).

  Computes what flax's nn.BatchNorm computes (statistics in float32 or wider,
  variance E[x²] − E[x]² clipped at 0, `axis_name` summing over devices), y in
  `x`'s dtype promoted with the parameters'. The normalisation's backward pass
  is written out: two sums and one elementwise pass, where autodiff of the
  same formula materialises the centred input and a scaled gradient and sums
  three times.
  """
  acc = jnp.promote_types(x.dtype, jnp.float32)
  xf = x.astype(acc)
  total, squares = _channel_sums(xf, xf * xf)
  count = x.size // x.shape[-1]
  if axis_name:
    total, squares, count = lax.psum((total, squares, count), axis_name)
  mean = total / count
  var = jnp.maximum(0.0, squares / count - mean * mean)
  out_dtype = jnp.result_type(x.dtype, scale.dtype, bias.dtype)
  stats = [_vary_like(v, x) for v in (mean, var, scale, bias)]
  return _normalize(x, *stats, epsilon, out_dtype), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _normalize(x, mean, var, scale, bias, epsilon, out_dtype):
  return _normalize_fwd(x, mean, var, scale, bias, epsilon, out_dtype)[0]


def _normalize_fwd(x, mean, var, scale, bias, epsilon, out_dtype):
  rstd = lax.rsqrt(var + epsilon)
  mul = rstd * scale.astype(mean.dtype)
  y = (x.astype(mean.dtype) - mean) * mul + bias.astype(mean.dtype)
  return y.astype(out_dtype), (x, mean, rstd, scale, bias)


def _normalize_bwd(epsilon, out_dtype, residuals, g):
  x, mean, rstd, scale, bias = residuals
  acc = mean.dtype
  g = g.astype(acc)
  # Σ g·(x − mean), not Σ g·x − mean·Σ g: the latter cancels catastrophically
  # in float32 when |mean| ≫ std (8 devices' updates then differ from one's by 1e-2).
  g_total, g_dot_centred = _channel_sums(g, g * (x.astype(acc) - mean))
  g_dot_xhat = rstd * g_dot_centred                   # Σ g·x̂, x̂ = (x − mean)·rstd
  scale_f = scale.astype(acc)
  mul = rstd * scale_f
  return ((mul * g).astype(x.dtype), -mul * g_total, -0.5 * scale_f * rstd * rstd * g_dot_xhat,
          g_dot_xhat.astype(scale.dtype), g_total.astype(bias.dtype))


_normalize.defvjp(_normalize_fwd, _normalize_bwd)
