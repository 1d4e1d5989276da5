"""Building blocks shared by every model: conv-BN, separable conv, pooling, head.

Conventions (see ARCHITECTURES.md): NHWC, TensorFlow "SAME" padding (XLA's
SAME pads asymmetrically exactly like TF), convolutions without bias followed
by batch norm, average pooling that excludes padding unless asked otherwise.
Layers receive their convolution and normalisation as `functools.partial`
module definitions, so a model decides dtype, initialiser, BN momentum and
train/eval mode in one place.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from xception_jax.models.ops import (batch_norm_train, conv_general_dilated_fn, resolve_impl,
                                    shifted_max_pool)

ModuleDef = Any
Activation = Optional[Callable[[jnp.ndarray], jnp.ndarray]]

# Keras' default kernel initialiser; keeps a fresh model statistically like the reference.
KERNEL_INIT = nn.initializers.glorot_uniform()

ACTIVATIONS = {None: None, 'none': None, 'relu': nn.relu, 'elu': nn.elu}


def activation_by_name(name: Optional[str]) -> Activation:
  """Returns the activation called `name` (None/'none', 'relu', 'elu')."""
  if name not in ACTIVATIONS:
    raise ValueError(f'Unknown activation {name!r}; choose one of '
                     f'{sorted(k for k in ACTIVATIONS if k)} or None.')
  return ACTIVATIONS[name]


def scaled_channels(channels: int, width_multiplier: float) -> int:
  """Channels after a width multiplier, rounded to a multiple of 8 (at least 8).

  A multiplier of 1 returns `channels` unchanged, so full-size models keep the
  reference widths (728 is not a multiple of 8·k for every k).
  """
  if width_multiplier <= 0:
    raise ValueError(f'width_multiplier must be positive, got {width_multiplier}.')
  if width_multiplier == 1:
    return channels
  return max(8, int(channels * width_multiplier + 4) // 8 * 8)


def check_input_size(x: jnp.ndarray, minimum: int, model_name: str) -> None:
  """Raises a one-line ValueError unless `x` is NHWC with H and W >= minimum."""
  if x.ndim != 4:
    raise ValueError(f'{model_name} expects NHWC images of rank 4, got shape {tuple(x.shape)}.')
  height, width = x.shape[1:3]
  if height < minimum or width < minimum:
    raise ValueError(f'{model_name} needs inputs of at least {minimum}x{minimum} pixels, '
                     f'got {height}x{width}; resize or pad the images.')


def max_pool(x: jnp.ndarray, window: int, stride: int, padding: Any = 'SAME',
             impl: str = 'auto') -> jnp.ndarray:
  """Square max pool computed as `impl` says ('xla', 'shifted', 'auto'; see ops.py).

  `padding` is SAME, VALID or explicit ((top, bottom), (left, right)) pairs.
  """
  if resolve_impl('pool', impl) == 'shifted':
    return shifted_max_pool(x, (window, window), (stride, stride), padding)
  return nn.max_pool(x, (window, window), (stride, stride), padding)


def avg_pool(x: jnp.ndarray, window: int, stride: int, padding: str = 'SAME',
             count_include_pad: bool = False) -> jnp.ndarray:
  """Average pool in `x`'s dtype; by default TF's SAME convention (padding not counted)."""
  y = nn.avg_pool(x, (window, window), (stride, stride), padding,
                  count_include_pad=count_include_pad)
  return y.astype(x.dtype)  # Flax divides by a float32 count map, which would promote bf16.


def global_pool(x: jnp.ndarray, kind: Optional[str]) -> jnp.ndarray:
  """'avg' or 'max' over H and W; None returns the feature map unchanged."""
  if kind is None:
    return x
  if kind == 'avg':
    return jnp.mean(x, axis=(1, 2))
  if kind == 'max':
    return jnp.max(x, axis=(1, 2))
  raise ValueError(f"pooling must be None, 'avg' or 'max', got {kind!r}.")


class FusedBatchNorm(nn.Module):
  """nn.BatchNorm over the last axis, with the same variables, defaults and results.

  Training mode computes the statistics and the gradient with
  `ops.batch_norm_train` (one pass over the activations for each, where
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


def conv_and_norm_defs(*, train: bool, dtype: Any, param_dtype: Any, bn_momentum: float,
                       bn_epsilon: float, bn_scale: bool, bn_axis_name: Optional[str] = None,
                       depthwise_impl: str = 'auto', pointwise_impl: str = 'auto',
                       conv_impl: str = 'auto',
                       norm_impl: str = 'auto') -> tuple[ModuleDef, ModuleDef]:
  """The (conv, norm) module definitions every model injects into its layers.

  The conv computes depthwise, 1×1 and other convs as `depthwise_impl`,
  `pointwise_impl` and `conv_impl` say, the norm is nn.BatchNorm ('xla') or FusedBatchNorm
  ('fused'); see ops.py. Parameters are nn.Conv's and nn.BatchNorm's either way.
  """
  conv = functools.partial(nn.Conv, use_bias=False, kernel_init=KERNEL_INIT,
                           dtype=dtype, param_dtype=param_dtype,
                           conv_general_dilated=conv_general_dilated_fn(
                               depthwise_impl, pointwise_impl, conv_impl))
  norm_layer = FusedBatchNorm if resolve_impl('norm', norm_impl) == 'fused' else nn.BatchNorm
  norm = functools.partial(norm_layer, use_running_average=not train, momentum=bn_momentum,
                           epsilon=bn_epsilon, use_scale=bn_scale, axis_name=bn_axis_name,
                           dtype=dtype, param_dtype=param_dtype)
  return conv, norm


def maybe_remat(block: type[nn.Module], remat: bool) -> type[nn.Module]:
  """`block`, or with `remat` its `nn.remat` version, whose activations are recomputed.

  A rematerialised block keeps only its inputs for the backward pass and runs
  its forward pass again there: activation memory falls to about one block's
  worth plus the block inputs, for roughly one more forward pass of compute.
  Parameter names and shapes are the same either way.
  """
  return nn.remat(block) if remat else block


class ConvBN(nn.Module):
  """conv (no bias) → batch norm → activation (ReLU unless None)."""
  features: int
  kernel_size: Sequence[int]
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  padding: str = 'SAME'
  activation: Activation = nn.relu

  @nn.compact
  def __call__(self, x):
    x = self.conv(self.features, tuple(self.kernel_size), (self.strides, self.strides),
                  padding=self.padding, name='conv')(x)
    x = self.norm(name='bn')(x)
    return x if self.activation is None else self.activation(x)


class SeparableConvBN(nn.Module):
  """Spatial 3×3 conv over channel segments → pointwise 1×1 conv → BN → activation.

  `segments=None` makes the spatial conv depthwise (one segment per channel:
  Xception's depthwise separable conv); `segments=1` is a full 3×3 conv;
  values between give the Inception-like points of the paper's §1.2 spectrum.
  Kernels: depthwise (3, 3, C/segments, C), pointwise (1, 1, C, features). No
  bias and nothing between the two convs (paper §4.7) unless
  `intermediate_activation` is set; no activation after BN unless `activation`.
  """
  features: int
  conv: ModuleDef
  norm: ModuleDef
  segments: Optional[int] = None
  intermediate_activation: Activation = None
  activation: Activation = None

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    groups = channels if self.segments is None else self.segments
    if groups < 1 or channels % groups:
      raise ValueError(f'channel_segments={self.segments} must divide the {channels} input '
                       f'channels of {self.name}; use a divisor of every width (e.g. 1, 2, 4, 8).')
    x = self.conv(channels, (3, 3), feature_group_count=groups, padding='SAME',
                  name='depthwise')(x)
    if self.intermediate_activation is not None:
      x = self.intermediate_activation(x)
    x = self.conv(self.features, (1, 1), padding='SAME', name='pointwise')(x)
    x = self.norm(name='bn')(x)
    return x if self.activation is None else self.activation(x)


class ClassifierHead(nn.Module):
  """Global average pool → optional ReLU FC layers → dropout → linear classifier."""
  num_classes: int
  dropout_rate: float = 0.0
  fc_layers: Sequence[int] = ()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    dense = functools.partial(nn.Dense, kernel_init=KERNEL_INIT, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    x = global_pool(x, 'avg')
    for i, width in enumerate(self.fc_layers):
      x = nn.relu(dense(width, name=f'fc{i + 1}')(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    # Logits in float32 whatever the compute dtype: the loss needs the precision.
    return dense(self.num_classes, name='predictions')(x).astype(jnp.float32)
