"""Xception (Chollet 2017, Figure 5), layer for layer as Keras `applications.Xception`.

Entry flow: two plain convs, then three downsampling modules (128, 256, 728).
Middle flow: eight identity-residual modules of three separable convs (728).
Exit flow: one downsampling module (728 → 1024), separable convs 1536 and 2048.
Every separable conv is followed by batch norm; ReLU precedes it inside modules.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from xception_jax.models import registry
from xception_jax.models.execution import Execution
from xception_jax.models.layers import (ClassifierHead, ConvBN, ModuleDef, SeparableConvBN,
                                        activation_by_name, check_input_size,
                                        conv_and_norm_defs, global_pool, scaled_channels)


# TF's SAME pads a stride-2 3×3 pool 0 before / 1 after on even sizes; PyTorch pads 1 / 1
# (timm's legacy_xception), which shifts every window by one pixel there.
POOL_PADDINGS = {'same': 'SAME', 'symmetric': ((1, 1), (1, 1))}


class XceptionModule(nn.Module):
  """Separable convs, each preceded by ReLU, plus a shortcut added at the end.

  `downsample=True`: a 3×3/2 max pool closes the main path and the shortcut is
  a 1×1/2 conv + BN (entry flow, block 13); otherwise the shortcut is the
  identity (middle flow). `residual=False` drops the shortcut (paper Fig. 9).
  `pool_padding`: 'same' (TF, Keras) or 'symmetric' (PyTorch, timm).
  """
  widths: Sequence[int]
  sep: ModuleDef
  conv: ModuleDef
  norm: ModuleDef
  max_pool: Callable
  downsample: bool
  residual: bool = True
  relu_first: bool = True
  pool_padding: str = 'same'

  @nn.compact
  def __call__(self, x):
    shortcut = x
    for i, width in enumerate(self.widths):
      if i > 0 or self.relu_first:
        x = nn.relu(x)
      x = self.sep(width, name=f'sepconv{i + 1}')(x)
    if self.downsample:
      x = self.max_pool(x, 3, 2, POOL_PADDINGS[self.pool_padding])
    if not self.residual:
      return x
    if self.downsample:
      shortcut = ConvBN(self.widths[-1], (1, 1), self.conv, self.norm, strides=2,
                        activation=None, name='shortcut')(shortcut)
    return x + shortcut


@registry.register_model('xception')
class Xception(nn.Module):
  """Xception classifier or backbone; inputs NHWC in [-1, 1], at least 71×71.

  Returns logits (float32) when `include_top` (the head pools by `pooling`,
  'avg' or 'max'); otherwise the exit-flow map, pooled by `pooling` ('avg',
  'max' or None). With `return_features=True` the
  call returns `(output, features)`, `features` mapping 'stem', 'block2',
  'block3', 'entry_flow', 'middle_flow', 'exit_flow' to their feature maps
  (strides 2, 4, 8, 16, 16, 32).
  """
  num_classes: int = 1000
  include_top: bool = True
  pooling: Optional[str] = 'avg'
  dropout_rate: float = 0.5                 # §4.3: before the logistic regression layer.
  residual: bool = True                     # False: Fig. 9's non-residual Xception.
  intermediate_activation: Optional[str] = None   # 'relu' / 'elu': Fig. 10.
  fc_layers: Sequence[int] = ()             # (4096, 4096): the JFT variant, Fig. 8.
  fc_activation: Optional[str] = 'relu'     # Of the fc_layers; None: linear.
  channel_segments: Optional[int] = None    # None = depthwise; 1 = full 3×3 conv (§1.2).
  width_multiplier: float = 1.0
  middle_flow_repeats: int = 8
  pool_padding: str = 'same'                # 'symmetric': timm's legacy_xception.
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  bn_scale: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  execution: Execution = Execution()        # How operations are computed, not what.

  min_input_size = 71
  # A seconds-per-step variant for smoke runs and tests.
  tiny_options = {'width_multiplier': 0.25, 'middle_flow_repeats': 1}
  feature_names = ('stem', 'block2', 'block3', 'entry_flow', 'middle_flow', 'exit_flow')
  feature_strides = (2, 4, 8, 16, 16, 32)

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    check_input_size(x, self.min_input_size, 'xception')
    if self.pool_padding not in POOL_PADDINGS:
      raise ValueError(f"pool_padding must be 'same' or 'symmetric', got {self.pool_padding!r}.")
    conv, norm = conv_and_norm_defs(
        train=train, dtype=self.dtype, param_dtype=self.param_dtype,
        bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, bn_scale=self.bn_scale,
        execution=self.execution)
    sep_options = dict(conv=conv, norm=norm, segments=self.channel_segments,
                       intermediate_activation=activation_by_name(self.intermediate_activation))
    sep = functools.partial(SeparableConvBN, **sep_options)
    # Rematerialisation units: each module and each exit-flow separable conv.
    module = functools.partial(self.execution.block(XceptionModule), sep=sep, conv=conv,
                               norm=norm, max_pool=self.execution.max_pool(),
                               residual=self.residual, pool_padding=self.pool_padding)
    exit_sep = functools.partial(self.execution.block(SeparableConvBN), activation=nn.relu,
                                 **sep_options)
    c = functools.partial(scaled_channels, width_multiplier=self.width_multiplier)
    exit_block = 5 + self.middle_flow_repeats
    features = {}
    x = jnp.asarray(x, self.dtype)

    # Entry flow.
    x = ConvBN(c(32), (3, 3), conv, norm, strides=2, padding='VALID', name='block1_conv1')(x)
    x = ConvBN(c(64), (3, 3), conv, norm, padding='VALID', name='block1_conv2')(x)
    features['stem'] = x
    x = features['block2'] = module((c(128), c(128)), downsample=True, relu_first=False,
                                    name='block2')(x)
    x = features['block3'] = module((c(256), c(256)), downsample=True, name='block3')(x)
    x = features['entry_flow'] = module((c(728), c(728)), downsample=True, name='block4')(x)

    # Middle flow.
    for i in range(self.middle_flow_repeats):
      x = module((c(728),) * 3, downsample=False, name=f'block{5 + i}')(x)
    features['middle_flow'] = x

    # Exit flow.
    x = module((c(728), c(1024)), downsample=True, name=f'block{exit_block}')(x)
    x = exit_sep(c(1536), name=f'block{exit_block + 1}_sepconv1')(x)
    x = exit_sep(c(2048), name=f'block{exit_block + 1}_sepconv2')(x)
    features['exit_flow'] = x

    if self.include_top:
      x = ClassifierHead(self.num_classes, self.dropout_rate, self.fc_layers, self.pooling,
                         self.fc_activation, dtype=self.dtype, param_dtype=self.param_dtype,
                         name='head')(x, train)
    else:
      x = global_pool(x, self.pooling)
    return (x, features) if return_features else x
