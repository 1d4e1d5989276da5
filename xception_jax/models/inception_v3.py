"""Inception-V3 (Szegedy et al. 2016), layer for layer as Keras `applications.InceptionV3`.

The Keras/slim topology: stem, three 35×35 modules (Fig. 5), a reduction,
four 17×17 modules with factorised 7×7 convs (Fig. 6), a reduction, two 8×8
modules with expanded filter banks (Fig. 7); optionally the auxiliary
classifier on the last 17×17 map (Fig. 8, §4).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xception_jax.models import registry
from xception_jax.models.inception_blocks import (AVG, REDUCE, V3_STEM, VALID, Conv,
                                                  InceptionBase, Split, pool, run_stem)
from xception_jax.models.layers import (KERNEL_INIT, ConvBN, ModuleDef, avg_pool, global_pool,
                                        scaled_channels)


def module_35(pool_features: int):
  """Mixed 5b–5d: 1×1 ‖ 1×1→5×5 ‖ 1×1→3×3→3×3 ‖ avg pool→1×1."""
  return ((Conv(64, 1),), (Conv(48, 1), Conv(64, 5)), (Conv(64, 1), Conv(96, 3), Conv(96, 3)),
          (AVG, Conv(pool_features, 1)))


def module_17(c7: int):
  """Mixed 6b–6e: 7×7 convs factorised into 1×7 and 7×1 with `c7` inner channels."""
  return ((Conv(192, 1),),
          (Conv(c7, 1), Conv(c7, (1, 7)), Conv(192, (7, 1))),
          (Conv(c7, 1), Conv(c7, (7, 1)), Conv(c7, (1, 7)), Conv(c7, (7, 1)), Conv(192, (1, 7))),
          (AVG, Conv(192, 1)))


def _expanded(features: int) -> Split:
  return Split((Conv(features, (1, 3)), Conv(features, (3, 1))))


MIXED_6A = ((Conv(384, 3, 2, VALID),), (Conv(64, 1), Conv(96, 3), Conv(96, 3, 2, VALID)),
            (REDUCE,))
MIXED_7A = ((Conv(192, 1), Conv(320, 3, 2, VALID)),
            (Conv(192, 1), Conv(192, (1, 7)), Conv(192, (7, 1)), Conv(192, 3, 2, VALID)),
            (REDUCE,))
MODULE_8 = ((Conv(320, 1),), (Conv(384, 1), _expanded(384)),
            (Conv(448, 1), Conv(384, 3), _expanded(384)), (AVG, Conv(192, 1)))

AUX_MIN_MAP = 17    # 5×5/3 VALID pool → 5×5, then the 5×5 VALID conv → 1×1.
AUX_MIN_INPUT = 299  # The smallest input whose mixed 6e map is 17×17.


class AuxHead(nn.Module):
  """avg pool 5×5/3 VALID → 1×1 conv 128 → 5×5 VALID conv 768 → global avg → dense.

  As slim and timm at 299×299 (where the conv output is 1×1); larger maps are
  averaged after the 5×5 conv like timm. Logits in float32.
  """
  num_classes: int
  conv: ModuleDef
  norm: ModuleDef
  width_multiplier: float = 1.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    height, width = x.shape[1:3]
    if min(height, width) < AUX_MIN_MAP:
      raise ValueError(
          f'The auxiliary head of inception_v3 needs inputs of at least {AUX_MIN_INPUT}x'
          f'{AUX_MIN_INPUT} (a {AUX_MIN_MAP}x{AUX_MIN_MAP} mixed_6e map), got a {height}x{width} '
          f'map; use larger images or aux_logits=False.')
    c = lambda n: scaled_channels(n, self.width_multiplier)
    x = avg_pool(x, 5, 3, 'VALID')
    x = ConvBN(c(128), (1, 1), self.conv, self.norm, name='conv0')(x)
    x = ConvBN(c(768), (5, 5), self.conv, self.norm, padding='VALID', name='conv1')(x)
    x = nn.Dense(self.num_classes, kernel_init=KERNEL_INIT, dtype=self.dtype,
                 param_dtype=self.param_dtype, name='predictions')(global_pool(x, 'avg'))
    return x.astype(jnp.float32)


@registry.register_model('inception_v3')
class InceptionV3(InceptionBase):
  """Inception-V3 classifier or backbone; NHWC inputs in [-1, 1], at least 75×75.

  Defaults are Keras' (shift-only batch norm: 23,817,352 parameters at 1000
  classes). `bn_scale=True, avg_pool_count_include_pad=True` is timm's
  inception_v3 (`weights.timm_model('inception_v3')`). `aux_logits=True` adds
  the auxiliary classifier on mixed 6e: a training call (`train=True`,
  `include_top=True`) then returns `(logits, aux_logits)`, both float32, for
  a loss weighted 0.4 on the auxiliary logits; it needs inputs of at least
  299×299, also at init. Features: 'conv_2b', 'conv_4a', 'mixed_5', 'mixed_6',
  'mixed_7' at strides 2, 4, 8, 16, 32 (64, 192, 288, 768, 2048 channels).
  """
  aux_logits: bool = False

  model_name = 'inception_v3'
  aux_min_input_size = AUX_MIN_INPUT
  feature_names = ('conv_2b', 'conv_4a', 'mixed_5', 'mixed_6', 'mixed_7')
  feature_strides = (2, 4, 8, 16, 32)

  def body(self, x, block, layer, max_pool, features, train):
    x = run_stem(x, V3_STEM, layer, max_pool, features, record=('conv_2b', 'conv_4a'))
    x = pool(x, REDUCE, max_pool)
    for suffix, pool_features in zip('bcd', (32, 64, 64)):
      x = block(module_35(pool_features), name=f'mixed_5{suffix}')(x)
    features['mixed_5'] = x
    x = block(MIXED_6A, name='mixed_6a')(x)
    for suffix, c7 in zip('bcde', (128, 160, 160, 192)):
      x = block(module_17(c7), name=f'mixed_6{suffix}')(x)
    features['mixed_6'] = x
    x = block(MIXED_7A, name='mixed_7a')(x)
    x = block(MODULE_8, name='mixed_7b')(x)
    x = features['mixed_7'] = block(MODULE_8, name='mixed_7c')(x)
    return x

  def auxiliary(self, features, conv, norm):
    if not self.aux_logits:
      return None
    return AuxHead(self.num_classes, conv, norm, self.width_multiplier, dtype=self.dtype,
                   param_dtype=self.param_dtype, name='aux')(features['mixed_6'])
