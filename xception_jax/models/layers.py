"""Building blocks shared by every model: conv-BN, separable conv, pooling, head.

Conventions (docs/architectures.md): NHWC, TensorFlow "SAME" padding (XLA's
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

from xception_jax.models.execution import Execution

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


def conv_and_norm_defs(*, train: bool, dtype: Any, param_dtype: Any, bn_momentum: float,
                       bn_epsilon: float, bn_scale: bool, execution: Execution,
                       bn_axis_name: Optional[str] = None) -> tuple[ModuleDef, ModuleDef]:
  """The (conv, norm) module definitions every model injects into its layers.

  Convs are nn.Conv without bias, computed in `execution`'s forms; the norm is
  nn.BatchNorm or FusedBatchNorm as `execution.norm` says. Parameters are
  nn.Conv's and nn.BatchNorm's either way.
  """
  conv = functools.partial(nn.Conv, use_bias=False, kernel_init=KERNEL_INIT,
                           dtype=dtype, param_dtype=param_dtype,
                           conv_general_dilated=execution.conv_general_dilated())
  norm = functools.partial(execution.norm_layer(), use_running_average=not train,
                           momentum=bn_momentum, epsilon=bn_epsilon, use_scale=bn_scale,
                           axis_name=bn_axis_name, dtype=dtype, param_dtype=param_dtype)
  return conv, norm


class ConvBN(nn.Module):
  """conv (no bias) → batch norm → activation (ReLU unless None).

  `before_norm`, if given, is applied to the conv's output before the norm (an Inception
  branch's average pool moved after its 1×1 conv: `Execution.avg_pool`).
  """
  features: int
  kernel_size: Sequence[int]
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  padding: str = 'SAME'
  activation: Activation = nn.relu
  before_norm: Optional[Callable[[jnp.ndarray], jnp.ndarray]] = None

  @nn.compact
  def __call__(self, x):
    x = self.conv(self.features, tuple(self.kernel_size), (self.strides, self.strides),
                  padding=self.padding, name='conv')(x)
    if self.before_norm is not None:
      x = self.before_norm(x)
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
  """Global pool ('avg' or 'max') → optional FC layers → dropout → linear classifier.

  The FC layers use `fc_activation` ('relu' or None for linear ones).
  """
  num_classes: int
  dropout_rate: float = 0.0
  fc_layers: Sequence[int] = ()
  pooling: Optional[str] = 'avg'
  fc_activation: Optional[str] = 'relu'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    if self.pooling not in ('avg', 'max'):
      raise ValueError(f"A classifier head pools with 'avg' or 'max', got pooling="
                       f"{self.pooling!r}; use include_top=False for the feature map.")
    activation = activation_by_name(self.fc_activation)
    dense = functools.partial(nn.Dense, kernel_init=KERNEL_INIT, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    x = global_pool(x, self.pooling)
    for i, width in enumerate(self.fc_layers):
      x = dense(width, name=f'fc{i + 1}')(x)
      x = x if activation is None else activation(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    # Logits in float32 whatever the compute dtype: the loss needs the precision.
    return dense(self.num_classes, name='predictions')(x).astype(jnp.float32)
