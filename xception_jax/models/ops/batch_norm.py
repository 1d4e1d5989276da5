"""Batch norm with its training-mode gradient written out ('fused').

Autodiff of the batch-norm formula materialises the centred input and a
scaled gradient and sums three times; written out, the backward pass is two
sums and one elementwise pass.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


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


class FusedBatchNorm(nn.Module):
  """nn.BatchNorm over the last axis, with the same variables, defaults and results.

  Training mode computes the statistics and the gradient with
  `batch_norm_train` (one pass over the activations for each, where
  autodiff of nn.BatchNorm takes about five); inference mode is nn.BatchNorm's
  formula. Names ('mean', 'var' in batch_stats; 'scale', 'bias' in params),
  initialisers and the running-average update are nn.BatchNorm's, so either
  layer reads the other's checkpoints.
  """
  use_running_average: Optional[bool] = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Optional[Any] = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, use_running_average: Optional[bool] = None):
    use_running_average = nn.merge_param('use_running_average', self.use_running_average,
                                         use_running_average)
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
    scale = (self.param('scale', nn.initializers.ones, features, self.param_dtype)
             if self.use_scale else jnp.ones(features, jnp.float32))
    bias = (self.param('bias', nn.initializers.zeros, features, self.param_dtype)
            if self.use_bias else jnp.zeros(features, jnp.float32))
    dtype = self.dtype or jnp.result_type(x, *(p for p, used in ((scale, self.use_scale),
                                                                 (bias, self.use_bias)) if used))
    if use_running_average:
      y = (x - ra_mean.value) * (lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
      return jnp.asarray(y, dtype)
    axis_name = None if self.is_initializing() else self.axis_name
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, axis_name)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return jnp.asarray(y, dtype)
