"""Inception-V3, -v4, Inception-ResNet-v1/v2: counts, shapes, options, gradients, dtypes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (REFERENCE_PARAMETER_COUNTS, check_training_step, init, param_count,
                     random_variables, train_step)
from xception_jax import models
from xception_jax.weights import tree

# Inception-ResNet-v1 by hand (paper Figs. 10-15, shift-only BN: a conv has k·k·in·out + out
# parameters, an expansion conv in·out + out): stem 3·3·3·32+32, 9·32·32+32, 9·32·64+64,
# 64·80+80, 9·80·192+192, 9·192·256+256; then per block / reduction:
V1_STEM = 614_896
V1_BLOCK35 = 3 * (256 * 32 + 32) + 3 * (9 * 32 * 32 + 32) + (96 * 256 + 256)
V1_MIXED_6A = (9 * 256 * 384 + 384) + (256 * 192 + 192) + (9 * 192 * 192 + 192) + \
    (9 * 192 * 256 + 256)
V1_BLOCK17 = 2 * (896 * 128 + 128) + 2 * (7 * 128 * 128 + 128) + (256 * 896 + 896)
V1_MIXED_7A = 3 * (896 * 256 + 256) + (9 * 256 * 384 + 384) + 3 * (9 * 256 * 256 + 256)
V1_BLOCK8 = 2 * (1792 * 192 + 192) + 2 * (3 * 192 * 192 + 192) + (384 * 1792 + 1792)
V1_HEAD = 1792 * 1000 + 1000
V1 = V1_STEM + 5 * V1_BLOCK35 + V1_MIXED_6A + 10 * V1_BLOCK17 + V1_MIXED_7A + 5 * V1_BLOCK8 + \
    V1_HEAD
# Inception-V3's auxiliary head: 1×1 conv 768→128 + BN, 5×5 conv 128→768 + BN, dense 768→1000.
V3_AUX = (768 * 128 + 128) + (25 * 128 * 768 + 768) + (768 * 1000 + 1000)
V3_AUX_BN_SCALE = 128 + 768


def test_inception_resnet_v1_by_hand():
  assert V1_BLOCK35 == 77_248 and V1_BLOCK17 == 689_536 and V1_BLOCK8 == 1_600_000
  assert V1 == REFERENCE_PARAMETER_COUNTS['inception_resnet_v1']
  assert V3_AUX == 3_325_800


@pytest.mark.parametrize('name, options, expected', [
    ('inception_v3', {}, 23_817_352),                             # Keras.
    ('inception_v3', dict(bn_scale=True), 23_834_568),            # timm.
    ('inception_v3', dict(aux_logits=True), 23_817_352 + V3_AUX),
    # timm/torchvision inception_v3 with its auxiliary head: 27,161,264.
    ('inception_v3', dict(aux_logits=True, bn_scale=True),
     23_834_568 + V3_AUX + V3_AUX_BN_SCALE),
    ('inception_v3', dict(num_classes=1001), 23_817_352 + 2049),  # slim's 1001 classes.
    ('inception_v3', dict(include_top=False), 23_817_352 - 2_049_000),
    # Xception Fig. 8's JFT head: two 4096-unit FC layers with bias before the classifier.
    ('inception_v3', dict(fc_layers=(4096, 4096)), 23_817_352 - 2_049_000 +
     (2048 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)),
    ('inception_v4', {}, 42_679_816),                             # timm (BN scale).
    ('inception_v4', dict(bn_scale=False), 42_648_232),           # slim's shift-only BN.
    ('inception_v4', dict(num_classes=1001), 42_679_816 + 1537),
    ('inception_resnet_v2', {}, 55_813_192),                      # Keras.
    ('inception_resnet_v2', dict(bn_scale=True), 55_843_464),     # timm.
    ('inception_resnet_v2', dict(num_classes=1001), 55_813_192 + 1537),
    ('inception_resnet_v1', {}, V1),
    ('inception_resnet_v1', dict(num_classes=1001), V1 + 1793),
    ('inception_resnet_v1', dict(block_repeats=(4, 9, 5)), V1 - V1_BLOCK35 - V1_BLOCK17),
])
def test_parameter_counts(name, options, expected):
  assert param_count(models.create_model(name, **options)) == expected


@pytest.mark.parametrize('name, options, expected', [
    ('inception_v3', {}, 23_851_784),                        # Keras count_params().
    ('inception_resnet_v2', {}, 55_873_736),                 # Keras count_params().
    ('inception_v4', dict(bn_scale=False, num_classes=1001), 42_712_937),  # slim checkpoint.
])
def test_counts_with_batch_norm_statistics(name, options, expected):
  model = models.create_model(name, **options)
  variables = jax.eval_shape(lambda: init(model, 75, batch=1))
  assert sum(x.size for x in jax.tree.leaves(variables)) == expected


@pytest.mark.parametrize('name, option', [('inception_v4', 'block_repeats'),
                                          ('inception_resnet_v1', 'block_repeats'),
                                          ('inception_resnet_v2', 'residual_scales')])
def test_per_stage_options_need_three_values(name, option):
  model = models.create_model(name, **{option: (1, 1)})
  with pytest.raises(ValueError, match=f'{name}: {option} needs one value per stage'):
    tree.variable_template(model)


@pytest.mark.long
def test_auxiliary_logits_contract():
  model = models.create_model('inception_v3', num_classes=5, aux_logits=True,
                              **models.InceptionV3.tiny_options)
  assert param_count(model) == param_count(model.clone(aux_logits=False)) + \
      (192 * 32 + 32) + (25 * 32 * 192 + 192) + (192 * 5 + 5)  # Widths 128, 768 at 1/4.
  variables = random_variables(model)  # Built at 299: the auxiliary head needs it.
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 299, 299, 3), minval=-1, maxval=1)
  evaluate = lambda m, x, **kw: jax.eval_shape(lambda v, x: m.apply(v, x, **kw), variables, x)
  assert evaluate(model, x).shape == (2, 5)  # Evaluation: the logits alone.
  backbone = model.clone(include_top=False)
  assert evaluate(backbone, x, train=True, mutable=['batch_stats'])[0].shape == (2, 512)
  (loss, ((logits, aux), state)), grads = train_step(model, variables, x, jnp.array([0, 1]))
  assert logits.shape == aux.shape == (2, 5) and logits.dtype == aux.dtype == jnp.float32
  assert not np.allclose(logits, aux)
  check_training_step(variables, loss, state, grads)  # The auxiliary head's parameters included.
  with pytest.raises(ValueError, match='auxiliary head of inception_v3 needs inputs of at '
                                       r'least 299x299.*got a 16x16 map'):
    evaluate(model, jnp.zeros((1, 298, 298, 3)), train=True, mutable=['batch_stats'])
  with pytest.raises(ValueError, match='auxiliary head'):  # Init too: it creates the head.
    tree.variable_template(model, 298)


def test_padding_inclusive_average_pool_changes_the_pooled_branches():
  model = models.create_model('inception_v3', include_top=False, pooling=None,
                              **models.InceptionV3.tiny_options)
  variables = random_variables(model)
  x = jax.random.uniform(jax.random.PRNGKey(1), (1, 75, 75, 3), minval=-1, maxval=1)
  both = jax.jit(lambda v, x: (
      model.apply(v, x, return_features=True)[1],
      model.clone(avg_pool_count_include_pad=True).apply(v, x, return_features=True)[1]))
  tf, torch = both(variables, x)
  np.testing.assert_array_equal(tf['conv_4a'], torch['conv_4a'])  # No average pool yet.
  assert not np.allclose(tf['mixed_5'], torch['mixed_5'])


def test_residual_scales_weight_the_residual_branches():
  model = models.create_model('inception_resnet_v2', include_top=False,
                              **models.InceptionResNetV2.tiny_options)
  variables = random_variables(model)
  x = jax.random.uniform(jax.random.PRNGKey(1), (1, 75, 75, 3), minval=-1, maxval=1)

  @jax.jit
  def block35_input_and_output(scale):
    _, state = model.clone(residual_scales=(scale, 0.1, 0.2)).apply(
        variables, x, capture_intermediates=True, mutable=['intermediates'])
    calls = state['intermediates']
    return calls['mixed_5b']['__call__'][0], calls['block35_1']['__call__'][0]

  before, after = block35_input_and_output(0.0)
  np.testing.assert_array_equal(after, before)  # relu(x + 0·r) = x for x ≥ 0.
  before, after = block35_input_and_output(0.17)
  assert not np.allclose(after, before)


def test_xception_pool_padding_differs_only_on_even_maps():
  options = dict(models.Xception.tiny_options, num_classes=5)
  same = models.create_model('xception', **options)
  symmetric = models.create_model('xception', pool_padding='symmetric', **options)
  variables = random_variables(same)
  both = jax.jit(lambda x: (same.apply(variables, x), symmetric.apply(variables, x)))
  # 71 → 33 after the stem; every pooled map (33, 17, 9, 5) is odd: both pad 1 and 1.
  odd = jax.random.uniform(jax.random.PRNGKey(1), (1, 71, 71, 3), minval=-1, maxval=1)
  np.testing.assert_array_equal(*both(odd))
  even = jax.random.uniform(jax.random.PRNGKey(1), (1, 79, 79, 3), minval=-1, maxval=1)
  assert not np.allclose(*both(even))  # 79 → 37 → 19 → 10: the last pools differ.
  with pytest.raises(ValueError, match="pool_padding must be 'same' or 'symmetric'"):
    models.create_model('xception', pool_padding='torch', **options).apply(variables, odd)
