"""Xception: parameter counts against the paper/Keras, shapes, options, gradients, dtypes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import (REFERENCE_PARAMETER_COUNTS, check_training_step, init, param_count,
                     random_variables, train_step)
from xception_jax import models

XCEPTION = REFERENCE_PARAMETER_COUNTS['xception']   # Paper Table 3 = Keras = timm.
XCEPTION_NO_TOP = 20_806_952   # Keras Xception(include_top=False) trainable count.
HEAD = 2048 * 1000 + 1000
# Shortcut 1×1 convs + BN (γ, β) of blocks 2, 3, 4 and 13 (docs/architectures.md):
SHORTCUTS = (64 * 128 + 2 * 128) + (128 * 256 + 2 * 256) + (256 * 728 + 2 * 728) + \
    (728 * 1024 + 2 * 1024)
# Input channels of the 34 separable convs, in order (paper Figure 5).
SEPARABLE_INPUTS = [64, 128, 128, 256, 256, 728] + [728] * 24 + [728, 728, 1024, 1536]

TINY = models.Xception.tiny_options


def test_full_size_parameter_counts():
  assert param_count(models.create_model('xception')) == XCEPTION
  assert param_count(models.create_model('xception', include_top=False)) == XCEPTION_NO_TOP
  variables = jax.eval_shape(lambda: init(models.create_model('xception'), 299, batch=1))
  stats = sum(x.size for x in jax.tree.leaves(variables['batch_stats']))
  assert XCEPTION + stats == 22_910_480  # Keras total count with BN moving statistics.


@pytest.mark.parametrize('options, expected', [
    # Fig. 9: removing the four conv shortcuts; the identity shortcuts hold no weights.
    (dict(residual=False), XCEPTION - SHORTCUTS),
    # Fig. 10: an activation between depthwise and pointwise adds no weights.
    (dict(intermediate_activation='relu'), XCEPTION),
    (dict(intermediate_activation='elu'), XCEPTION),
    # Fig. 8 (JFT): two 4096-unit FC layers with bias before the classifier.
    (dict(fc_layers=(4096, 4096)),
     XCEPTION_NO_TOP + (2048 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)),
    # 17,000 JFT classes.
    (dict(num_classes=17_000), XCEPTION_NO_TOP + 2048 * 17_000 + 17_000),
    # §1.2 spectrum: the spatial conv over S segments has 9·C·C/S weights instead of 9·C.
    (dict(channel_segments=1), XCEPTION + sum(9 * c * c - 9 * c for c in SEPARABLE_INPUTS)),
    (dict(channel_segments=8), XCEPTION + sum(9 * c * c // 8 - 9 * c for c in SEPARABLE_INPUTS)),
])
def test_option_parameter_counts(options, expected):
  assert param_count(models.create_model('xception', **options)) == expected


def test_middle_flow_repeats_change_count_by_whole_modules():
  middle_module = 3 * (9 * 728 + 728 * 728 + 2 * 728)
  assert middle_module == 1_613_976  # The per-part count of docs/architectures.md.
  assert param_count(models.create_model('xception', middle_flow_repeats=2)) == \
      XCEPTION - 6 * middle_module


def expected_sizes(size):
  """Spatial sizes after the stem (two VALID 3×3 convs, the first strided) and each SAME /2."""
  stem = (size - 3) // 2 + 1 - 2
  return [stem] + [-(-stem // 2 ** k) for k in range(1, 5)]


@pytest.mark.parametrize('size, final', [(71, 3), (72, 3), (100, 3), (151, 5), (299, 10)])
def test_feature_shapes_and_strides(size, final):
  assert expected_sizes(size)[-1] == final
  model = models.create_model('xception', include_top=False, pooling=None)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  (out, feats), _ = jax.eval_shape(lambda x: model.init_with_output(
      jax.random.PRNGKey(0), x, return_features=True), x)
  assert out.shape == (2, final, final, 2048)
  assert sorted(feats) == sorted(models.Xception.feature_names)
  channels = {'stem': 64, 'block2': 128, 'block3': 256, 'entry_flow': 728, 'middle_flow': 728,
              'exit_flow': 2048}
  spatial = dict(zip(['stem', 'block2', 'block3', 'entry_flow', 'exit_flow'],
                     expected_sizes(size)), middle_flow=expected_sizes(size)[3])
  for name, feature in feats.items():
    assert feature.shape == (2, spatial[name], spatial[name], channels[name])
  assert feats['exit_flow'].shape == out.shape
  assert feats['entry_flow'].shape == feats['middle_flow'].shape


def test_channel_segments_must_divide_every_width():
  model = models.create_model('xception', channel_segments=3, **TINY)
  with pytest.raises(ValueError, match='channel_segments=3 must divide the 16 input channels'):
    init(model, 71)


def test_unknown_activation_is_rejected():
  with pytest.raises(ValueError, match="Unknown activation 'gelu'"):
    init(models.create_model('xception', intermediate_activation='gelu', **TINY), 71)


@pytest.mark.long
def test_dropout_is_active_only_in_training():
  model = models.create_model('xception', num_classes=5, dropout_rate=0.5, **TINY)
  variables = init(model, 71)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 71, 71, 3), minval=-1, maxval=1)
  evaluate = jax.jit(model.apply)
  np.testing.assert_array_equal(evaluate(variables, x), evaluate(variables, x))
  train = jax.jit(lambda seed: model.apply(variables, x, train=True, mutable=['batch_stats'],
                                           rngs={'dropout': jax.random.PRNGKey(seed)})[0])
  assert not np.allclose(train(0), train(1))
  np.testing.assert_array_equal(train(3), train(3))


@pytest.mark.parametrize('options', [
    dict(residual=False, intermediate_activation='relu', fc_layers=(32, 32)),
    dict(intermediate_activation='elu', channel_segments=1),
    dict(channel_segments=4),
], ids=lambda o: ','.join(f'{k}={v}' for k, v in o.items()))
def test_training_step_with_the_papers_options(options):
  """The model contract's training step (tests/test_model_contract.py) with the options of
  Figs. 8-10 and the §1.2 spectrum, three compiled programs for all of them."""
  model = models.create_model('xception', num_classes=5, **TINY, **options)
  variables = random_variables(model, 71)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 71, 71, 3), minval=-1, maxval=1)
  (loss, (logits, state)), grads = train_step(model, variables, x, jnp.arange(4))
  assert logits.shape == (4, 5)
  check_training_step(variables, loss, state, grads)
