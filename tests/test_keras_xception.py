"""Xception equals Keras `applications.Xception` carrying the same random weights."""
import jax
import keras
import numpy as np
import pytest

from keras_helpers import randomize_batch_norm, save_legacy_weights
from xception_jax import models, weights

TOLERANCE = 1e-4  # Max abs difference allowed on float32 logits / features.


# Session-wide: the suite runs long tests first, so a module's tests do not run in a row and
# a module-scoped Keras model was built again for each of them. Tests must not change it.
@pytest.fixture(scope='session')
def keras_xception():
  model = keras.applications.Xception(weights=None, classifier_activation=None)
  randomize_batch_norm(model, seed=0)
  return model


@pytest.fixture(scope='session')
def converted(keras_xception):
  return weights.from_keras('xception', keras_xception)


def images(size, seed=1, batch=2):
  return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype('float32')


@pytest.mark.long(seconds=12)
def test_logits_equal_keras_at_299(keras_xception, converted):
  x = images(299)
  expected = keras_xception.predict(x, verbose=0)
  ours = jax.jit(models.create_model('xception').apply)(converted, x)
  assert np.abs(expected).max() > 0.1  # Random BN statistics give non-trivial logits.
  assert np.abs(np.asarray(ours) - expected).max() < TOLERANCE


@pytest.mark.long(seconds=19)
@pytest.mark.parametrize('forms', [{}, dict(depthwise='onednn', pointwise='onednn', conv='onednn')],
                         ids=['auto', 'onednn'])
def test_logits_equal_keras_at_a_smaller_odd_size(keras_xception, converted, forms):
  small = keras.applications.Xception(weights=None, classifier_activation=None,
                                      input_shape=(151, 151, 3))
  small.set_weights(keras_xception.get_weights())
  x = images(151, seed=2)
  expected = small.predict(x, verbose=0)
  model = models.create_model('xception', execution=models.Execution(**forms))
  ours = jax.jit(model.apply)(converted, x)
  assert np.abs(np.asarray(ours) - expected).max() < TOLERANCE


@pytest.mark.long(seconds=15)
@pytest.mark.parametrize('pooling', [None, 'avg'])
def test_backbone_equals_keras_without_top(pooling):
  reference = keras.applications.Xception(weights=None, include_top=False, pooling=pooling,
                                          input_shape=(99, 99, 3))
  randomize_batch_norm(reference, seed=3)
  variables = weights.from_keras('xception', reference)
  assert 'head' not in variables['params']
  x = images(99, seed=4)
  expected = reference.predict(x, verbose=0)
  ours = jax.jit(models.create_model('xception', include_top=False,
                                     pooling=pooling).apply)(variables, x)
  assert ours.shape == expected.shape
  assert np.abs(np.asarray(ours) - expected).max() < TOLERANCE


def test_backbone_only_import_from_a_model_with_top(keras_xception, converted):
  backbone = weights.from_keras('xception', keras_xception, include_top=False)
  assert 'head' not in backbone['params']
  without_head = {k: {m: v for m, v in tree.items() if m != 'head'}
                  for k, tree in converted.items()}
  jax.tree.map(np.testing.assert_array_equal, backbone, without_head)


@pytest.mark.long
def test_every_keras_file_format_converts_to_the_same_weights(keras_xception, converted,
                                                               tmp_path):
  legacy = tmp_path / 'xception_weights_tf_dim_ordering_tf_kernels.h5'
  save_legacy_weights(keras_xception, legacy)  # The official ImageNet weights' format.
  keras_xception.save_weights(tmp_path / 'x.weights.h5')
  keras_xception.save(tmp_path / 'x.keras')
  keras_xception.save(tmp_path / 'x.h5')
  for path in [legacy, tmp_path / 'x.weights.h5', tmp_path / 'x.keras', tmp_path / 'x.h5']:
    loaded = weights.from_keras('xception', path)
    jax.tree.map(np.testing.assert_array_equal, loaded, converted)


@pytest.mark.long
def test_converted_weights_round_trip_through_an_orbax_checkpoint(keras_xception, converted,
                                                                   tmp_path):
  legacy = tmp_path / 'weights.h5'
  save_legacy_weights(keras_xception, legacy)
  directory = weights.save_variables(weights.from_keras('xception', legacy), tmp_path / 'ckpt')
  restored = weights.load_variables(directory)
  jax.tree.map(np.testing.assert_array_equal, restored, converted)
  with pytest.raises(FileExistsError, match='choose a new directory'):
    weights.save_variables(converted, directory)
  x = images(71, seed=5)
  apply = jax.jit(models.create_model('xception').apply)
  np.testing.assert_array_equal(apply(restored, x), apply(converted, x))


def test_mismatches_are_named(keras_xception):
  with pytest.raises(ValueError, match=r'shape mismatch: params/head/predictions/bias \(1000,\) '
                                       r'vs model \(10,\)'):
    weights.from_keras('xception', keras_xception, num_classes=10)
  notop = keras.applications.Xception(weights=None, include_top=False, input_shape=(71, 71, 3))
  with pytest.raises(ValueError, match='missing in Keras xception: params/head/predictions/bias, '
                                       'params/head/predictions/kernel'):
    weights.from_keras('xception', notop, include_top=True)
  with pytest.raises(ValueError, match=r'not in the model: batch_stats/block13/shortcut/bn/mean.*params/block13/shortcut/conv/kernel'):
    weights.from_keras('xception', keras_xception, residual=False)


def test_bad_sources_are_rejected(tmp_path):
  with pytest.raises(FileNotFoundError, match='No Keras model or weights file'):
    weights.from_keras('xception', tmp_path / 'absent.h5')
  (tmp_path / 'weights.txt').write_text('not weights')
  with pytest.raises(ValueError, match=r'expected a \.keras, \.h5 or \.weights\.h5 file'):
    weights.from_keras('xception', tmp_path / 'weights.txt')
  with pytest.raises(ValueError, match="No Keras import for 'resnet50'"):
    weights.from_keras('resnet50', tmp_path / 'weights.txt')
