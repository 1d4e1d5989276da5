"""Shifted windows: the building block of the fast forms, and `stored`.

Every fast form reads its input as one strided slice per window tap
(`windows`) and writes gradients back with the transpose (`scatter_windows`);
`stored` keeps XLA's CPU fusion from recomputing a producer for each read.
"""
from __future__ import annotations

from typing import Iterator, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

Padding = Union[str, Sequence[tuple[int, int]]]
Pads = tuple[tuple[int, int], tuple[int, int]]


def explicit_pads(hw: Sequence[int], window: Sequence[int], strides: Sequence[int],
                  padding: Padding) -> Pads:
  """((top, bottom), (left, right)) for 'SAME', 'VALID' or explicit padding."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(tuple(hw), tuple(window), tuple(strides), padding)
  (top, bottom), (left, right) = padding
  return (int(top), int(bottom)), (int(left), int(right))


def pad_hw(x: jnp.ndarray, pads: Pads, value) -> jnp.ndarray:
  (top, bottom), (left, right) = pads
  return lax.pad(x, jnp.array(value, x.dtype),
                 ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))


def crop_hw(xp: jnp.ndarray, pads: Pads) -> jnp.ndarray:
  """The transpose of `pad_hw`: `xp` without its padding."""
  (top, bottom), (left, right) = pads
  return xp[:, top:xp.shape[1] - bottom, left:xp.shape[2] - right]


def out_hw(padded_hw, window, strides) -> tuple[int, int]:
  return tuple((n - k) // s + 1 for n, k, s in zip(padded_hw, window, strides))


def windows(xp: jnp.ndarray, window: Sequence[int],
            strides: Sequence[int]) -> Iterator[tuple[int, int, jnp.ndarray]]:
  """(i, j, xp[:, i::sh, j::sw, :] cut to the output size) for every tap of the window."""
  (kh, kw), (sh, sw) = window, strides
  out_h, out_w = out_hw(xp.shape[1:3], window, strides)
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


def add_tuples(a, b):
  return tuple(p + q for p, q in zip(a, b))


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


@jax.custom_vjp
def stored_with_gradient(a: jnp.ndarray) -> jnp.ndarray:
  """`a` itself, stored as `stored` stores it, and its gradient stored too.

  For a chain of residual blocks: each block's sum is read by the next block's sum and by
  operations XLA cannot fuse (convs), so XLA keeps it in memory and also recomputes it,
  and every sum before it, inside the next sum's fusion; the gradients chain back the
  same way. Stored both ways, each is computed once (not differentiable twice).
  """
  return stored(a)


stored_with_gradient.defvjp(lambda a: (stored(a), None), lambda _, g: (stored(g),))
