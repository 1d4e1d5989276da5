"""Inception-v4 (Szegedy et al. 2017, Figs. 3–9), layer for layer as slim and timm.

Stem (Fig. 3) → 4 × Inception-A → Reduction-A → 7 × Inception-B →
Reduction-B → 3 × Inception-C; branch order and concatenation order as slim
(so checkpoints' channel orders match), widths as the paper's figures.
"""
from __future__ import annotations

from typing import Sequence

from xception_jax.models import registry
from xception_jax.models.inception_blocks import (AVG, REDUCE, V3_STEM, VALID, Conv,
                                                  InceptionBase, Split, per_stage, reduction_a,
                                                  run_stem)

# Stem (Fig. 3) after its three plain convs: the two branches of each mixed block.
MIXED_3A = ((REDUCE,), (Conv(96, 3, 2, VALID),))
MIXED_4A = ((Conv(64, 1), Conv(96, 3, 1, VALID)),
            (Conv(64, 1), Conv(64, (1, 7)), Conv(64, (7, 1)), Conv(96, 3, 1, VALID)))
MIXED_5A = ((Conv(192, 3, 2, VALID),), (REDUCE,))

INCEPTION_A = ((Conv(96, 1),), (Conv(64, 1), Conv(96, 3)),
               (Conv(64, 1), Conv(96, 3), Conv(96, 3)), (AVG, Conv(96, 1)))
REDUCTION_A = reduction_a(192, 224, 256, 384)
INCEPTION_B = ((Conv(384, 1),), (Conv(192, 1), Conv(224, (1, 7)), Conv(256, (7, 1))),
               (Conv(192, 1), Conv(192, (7, 1)), Conv(224, (1, 7)), Conv(224, (7, 1)),
                Conv(256, (1, 7))),
               (AVG, Conv(128, 1)))
REDUCTION_B = ((Conv(192, 1), Conv(192, 3, 2, VALID)),
               (Conv(256, 1), Conv(256, (1, 7)), Conv(320, (7, 1)), Conv(320, 3, 2, VALID)),
               (REDUCE,))
_EXPANDED = Split((Conv(256, (1, 3)), Conv(256, (3, 1))))
INCEPTION_C = ((Conv(256, 1),), (Conv(384, 1), _EXPANDED),
               (Conv(384, 1), Conv(448, (3, 1)), Conv(512, (1, 3)), _EXPANDED),
               (AVG, Conv(256, 1)))


@registry.register_model('inception_v4')
class InceptionV4(InceptionBase):
  """Inception-v4 classifier or backbone; NHWC inputs in [-1, 1], at least 75×75.

  Batch norm with scale by default: timm's checkpoints, the only ones that
  import, have it (42,679,816 parameters at 1000 classes); slim's have none
  (`bn_scale=False`). `block_repeats` counts the Inception-A, -B, -C modules
  (paper: 4, 7, 3). Features: 'conv_2b', 'mixed_4a', 'inception_a',
  'inception_b', 'inception_c' at strides 2, 4, 8, 16, 32 (64, 192, 384,
  1024, 1536 channels).
  """
  bn_scale: bool = True
  block_repeats: Sequence[int] = (4, 7, 3)

  model_name = 'inception_v4'
  tiny_options = {'width_multiplier': 0.25, 'block_repeats': (1, 1, 1)}
  feature_names = ('conv_2b', 'mixed_4a', 'inception_a', 'inception_b', 'inception_c')
  feature_strides = (2, 4, 8, 16, 32)

  def body(self, x, block, layer, max_pool, features, train):
    x = run_stem(x, V3_STEM[:3], layer, max_pool, features, record=('conv_2b',))
    x = block(MIXED_3A, name='mixed_3a')(x)
    x = features['mixed_4a'] = block(MIXED_4A, name='mixed_4a')(x)
    x = block(MIXED_5A, name='mixed_5a')(x)
    stages = (('a', INCEPTION_A, REDUCTION_A), ('b', INCEPTION_B, REDUCTION_B),
              ('c', INCEPTION_C, None))
    repeats_per_stage = per_stage(self.block_repeats, 'block_repeats', self.model_name)
    for (letter, module, reduction), repeats in zip(stages, repeats_per_stage):
      for i in range(repeats):
        x = block(module, name=f'inception_{letter}_{i + 1}')(x)
      features[f'inception_{letter}'] = x
      if reduction is not None:
        x = block(reduction, name=f'reduction_{letter}')(x)
    return x
