"""Inception-ResNet-v1 and -v2 (Szegedy et al. 2017, §3.2).

Residual Inception blocks: branches → concat → linear 1×1 expansion conv (bias,
no BN) → × scale → add → ReLU. v1 is the paper's Figs. 10–15 (5/10/5 blocks).
v2 is the topology of Keras, slim and timm, which every checkpoint uses
(10/20/10 blocks on the Inception-V3 stem plus mixed 5b; the last block has
scale 1.0 and no ReLU; a final 1×1 conv to 1536 channels).
"""
from __future__ import annotations

from typing import Sequence

from xception_jax.models import registry
from xception_jax.models.inception_blocks import (AVG, REDUCE, V3_STEM, VALID, Conv,
                                                  InceptionBase, per_stage, pool, reduction_a,
                                                  residual_stages, run_stem)

_STEM_FEATURES = ('conv_2b', 'conv_4a')


def _residual_block(first: int, second: tuple[int, int, int], kernels) -> tuple:
  """1×1 `first` ‖ 1×1 → two factorised convs (widths `second`, kernels `kernels`)."""
  return ((Conv(first, 1),),
          (Conv(second[0], 1), Conv(second[1], kernels[0]), Conv(second[2], kernels[1])))


# Inception-ResNet-v1: Fig. 14 stem, Figs. 10, 7 (k, l, m, n = 192, 192, 256, 384), 11, 12, 13.
V1_STEM = V3_STEM + (('conv_4b', Conv(256, 3, 2, VALID)),)
V1_BLOCK35 = ((Conv(32, 1),), (Conv(32, 1), Conv(32, 3)),
              (Conv(32, 1), Conv(32, 3), Conv(32, 3)))
V1_MIXED_6A = reduction_a(192, 192, 256, 384)
V1_BLOCK17 = _residual_block(128, (128, 128, 128), ((1, 7), (7, 1)))
V1_MIXED_7A = ((Conv(256, 1), Conv(384, 3, 2, VALID)), (Conv(256, 1), Conv(256, 3, 2, VALID)),
               (Conv(256, 1), Conv(256, 3), Conv(256, 3, 2, VALID)), (REDUCE,))
V1_BLOCK8 = _residual_block(192, (192, 192, 192), ((1, 3), (3, 1)))

# Inception-ResNet-v2 as Keras `inception_resnet_v2.py`.
V2_MIXED_5B = ((Conv(96, 1),), (Conv(48, 1), Conv(64, 5)),
               (Conv(64, 1), Conv(96, 3), Conv(96, 3)), (AVG, Conv(64, 1)))
V2_BLOCK35 = ((Conv(32, 1),), (Conv(32, 1), Conv(32, 3)),
              (Conv(32, 1), Conv(48, 3), Conv(64, 3)))
V2_MIXED_6A = reduction_a(256, 256, 384, 384)
V2_BLOCK17 = _residual_block(192, (128, 160, 192), ((1, 7), (7, 1)))
V2_MIXED_7A = ((Conv(256, 1), Conv(384, 3, 2, VALID)), (Conv(256, 1), Conv(288, 3, 2, VALID)),
               (Conv(256, 1), Conv(288, 3), Conv(320, 3, 2, VALID)), (REDUCE,))
V2_BLOCK8 = _residual_block(192, (192, 224, 256), ((1, 3), (3, 1)))


class _InceptionResNet(InceptionBase):
  block_repeats: Sequence[int] = ()
  residual_scales: Sequence[float] = (0.17, 0.10, 0.20)

  def stages(self, mixed_6a, mixed_7a, modules):
    """The (name, branches, repeats, reduction) of the three residual stages."""
    per_stage(self.residual_scales, 'residual_scales', self.model_name)
    repeats = per_stage(self.block_repeats, 'block_repeats', self.model_name)
    return tuple(zip(('block35', 'block17', 'block8'), modules, repeats,
                     (('mixed_6a', mixed_6a), ('mixed_7a', mixed_7a), None)))


@registry.register_model('inception_resnet_v1')
class InceptionResNetV1(_InceptionResNet):
  """Inception-ResNet-v1 (paper Figs. 10–15); NHWC inputs in [-1, 1], at least 75×75.

  Shift-only batch norm (slim's default, as facenet): 22,742,808 parameters
  at 1000 classes. `block_repeats` counts the residual blocks of the 35×35,
  17×17 and 8×8 stages (paper: 5, 10, 5); `residual_scales` their scales
  (0.17, 0.10, 0.20 as the references; the paper says 0.1 to 0.3). Every
  block ends with ReLU. Features: 'conv_2b', 'conv_4a', 'block35', 'block17',
  'block8' at strides 2, 4, 8, 16, 32 (64, 192, 256, 896, 1792 channels).
  """
  block_repeats: Sequence[int] = (5, 10, 5)

  model_name = 'inception_resnet_v1'
  tiny_options = {'width_multiplier': 0.25, 'block_repeats': (1, 1, 1)}
  feature_names = ('conv_2b', 'conv_4a', 'block35', 'block17', 'block8')
  feature_strides = (2, 4, 8, 16, 32)

  def body(self, x, block, layer, max_pool, features, train):
    x = run_stem(x, V1_STEM, layer, max_pool, features, record=_STEM_FEATURES)
    stages = self.stages(V1_MIXED_6A, V1_MIXED_7A, (V1_BLOCK35, V1_BLOCK17, V1_BLOCK8))
    return residual_stages(x, block, stages, self.residual_scales, features)


@registry.register_model('inception_resnet_v2')
class InceptionResNetV2(_InceptionResNet):
  """Inception-ResNet-v2 as Keras/slim/timm; NHWC inputs in [-1, 1], at least 75×75.

  Defaults are Keras' (shift-only batch norm: 55,813,192 parameters at 1000
  classes); `bn_scale=True` is timm's (55,843,464). `block_repeats` counts the
  block35, block17 and block8 blocks (10, 20, 10; the last block8 has scale
  1.0 and no ReLU), `residual_scales` their scales. Features: 'conv_2b',
  'conv_4a', 'block35', 'block17', 'block8', 'conv_7b' at strides 2, 4, 8,
  16, 32, 32 (64, 192, 320, 1088, 2080, 1536 channels).
  """
  block_repeats: Sequence[int] = (10, 20, 10)

  model_name = 'inception_resnet_v2'
  tiny_options = {'width_multiplier': 0.25, 'block_repeats': (1, 1, 1)}
  feature_names = ('conv_2b', 'conv_4a', 'block35', 'block17', 'block8', 'conv_7b')
  feature_strides = (2, 4, 8, 16, 32, 32)

  def body(self, x, block, layer, max_pool, features, train):
    x = run_stem(x, V3_STEM, layer, max_pool, features, record=_STEM_FEATURES)
    x = pool(x, REDUCE, max_pool)
    x = block(V2_MIXED_5B, name='mixed_5b')(x)
    stages = self.stages(V2_MIXED_6A, V2_MIXED_7A, (V2_BLOCK35, V2_BLOCK17, V2_BLOCK8))
    x = residual_stages(x, block, stages, self.residual_scales, features, last_linear=True)
    x = features['conv_7b'] = layer(Conv(1536, 1), name='conv_7b')(x)
    return x
