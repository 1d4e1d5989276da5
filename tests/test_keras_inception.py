"""Inception-V3 and Inception-ResNet-v2 equal Keras' applications carrying the same weights."""
import functools

import jax
import keras
import numpy as np
import pytest

from keras_helpers import randomize_batch_norm, save_legacy_weights
from xception_jax import models, weights

TOLERANCE = 1e-4  # Max abs difference allowed on float32 logits / features.
APPLICATIONS = {'inception_v3': keras.applications.InceptionV3,
                'inception_resnet_v2': keras.applications.InceptionResNetV2}


def images(size, seed=1, batch=2):
  return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype('float32')


@functools.cache
def keras_reference(name):
  """(Keras model at 299 with random BN statistics, our converted variables), built once per
  worker: a parametrised fixture of any scope keeps only its latest parameter, and the suite
  runs long tests first, so the two models' tests alternate. Tests must not change them."""
  model = APPLICATIONS[name](weights=None, classifier_activation=None)
  randomize_batch_norm(model, seed=0)
  return model, weights.from_keras(name, model)


@pytest.fixture(params=list(APPLICATIONS))
def reference(request):
  """(name, Keras model at 299 with random BN statistics, our converted variables)."""
  return request.param, *keras_reference(request.param)


@pytest.mark.long
def test_logits_equal_keras_at_299_and_107(reference):
  name, keras_model, converted = reference
  model = models.create_model(name)
  small = APPLICATIONS[name](weights=None, classifier_activation=None, input_shape=(107, 107, 3))
  small.set_weights(keras_model.get_weights())
  for size, reference in ((299, keras_model), (107, small)):
    x = images(size, seed=size)
    expected = reference.predict(x, verbose=0)
    assert np.abs(expected).max() > 0.1  # Random BN statistics give non-trivial logits.
    difference = np.abs(np.asarray(jax.jit(model.apply)(converted, x)) - expected).max()
    print(f'{name} at {size}: max abs difference {difference:.2e}')
    assert difference < TOLERANCE


def test_mismatches_name_the_keras_layers(reference):
  name, keras_model, _ = reference
  with pytest.raises(ValueError, match=r'shape mismatch: batch_stats/\w+/(branch0_0/)?bn/mean '
                                       r'\(Keras batch_normalization(_\d+)?\) \((\d+),\) vs model'):
    weights.from_keras(name, keras_model, width_multiplier=0.5)
  if name == 'inception_v3':
    with pytest.raises(ValueError, match=r'missing in Keras inception_v3: batch_stats/aux/conv0'
                                         r'/bn/mean.*params/aux/predictions/kernel$'):
      weights.from_keras(name, keras_model, aux_logits=True)
  else:  # Fewer blocks: the Keras layers of the blocks left out have no place.
    with pytest.raises(ValueError, match=r'not in the model: Keras layer batch_normalization_\d+'
                                         r'.*Keras layer block8_10_conv'):
      weights.from_keras(name, keras_model, block_repeats=(10, 20, 9))


@pytest.mark.long
def test_backbone_from_an_official_style_weights_file(tmp_path):
  # The official Keras ImageNet files are weights-only legacy h5; loading one builds a fresh
  # application whose layers Keras numbers anew.
  reference = keras.applications.InceptionV3(weights=None, include_top=False, pooling=None,
                                             input_shape=(99, 99, 3))
  randomize_batch_norm(reference, seed=3)
  path = tmp_path / 'inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5'
  save_legacy_weights(reference, path)
  variables = weights.from_keras('inception_v3', path)
  assert 'head' not in variables['params']
  x = images(99, seed=4)
  expected = reference.predict(x, verbose=0)
  ours = jax.jit(models.create_model('inception_v3', include_top=False,
                                     pooling=None).apply)(variables, x)
  assert ours.shape == expected.shape == (2, 1, 1, 2048)
  difference = np.abs(np.asarray(ours) - expected).max()
  print(f'inception_v3 backbone at 99: max abs difference {difference:.2e}')
  assert difference < TOLERANCE
