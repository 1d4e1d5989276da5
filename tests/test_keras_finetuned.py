"""Fine-tuned Keras classifiers import: an application nested or inlined, under a head of
global pooling, Dense and Dropout layers, saved as .keras and .h5, gives Keras's logits."""
import functools

import jax
import keras
import numpy as np
import pytest

from helpers import random_variables, timm_state_dict
from keras_helpers import randomize_batch_norm
from xception_jax import models, weights

SIZE = 75
TOLERANCE = 1e-4  # Max |ours − Keras| relative to max |Keras|, float32 logits.


def images(seed=1, batch=2):
  return np.random.default_rng(seed).uniform(-1, 1, (batch, SIZE, SIZE, 3)).astype('float32')


@pytest.fixture(scope='session')  # Built once per worker (test_keras_xception.py says why).
def backbone():
  model = keras.applications.Xception(weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
  randomize_batch_norm(model, seed=0)
  return model


def nested(backbone, *head):
  inputs = keras.Input((SIZE, SIZE, 3))
  x = backbone(inputs)
  for layer in head:
    x = layer(x)
  return keras.Model(inputs, x)


@functools.cache
def jitted(model):
  return jax.jit(model.apply)


def relative_difference(model, variables, keras_model, x) -> float:
  expected = keras_model.predict(x, verbose=0)
  ours = np.asarray(jitted(model)(variables, x))
  assert ours.shape == expected.shape
  return float(np.abs(ours - expected).max() / np.abs(expected).max())


@pytest.mark.long(seconds=30)
def test_a_nested_backbone_under_a_new_head_in_both_file_formats(backbone, tmp_path):
  # The head of a typical transfer-learning model: pooled features, a hidden ReLU layer,
  # dropout, and a new classifier.
  keras_model = nested(backbone, keras.layers.GlobalAveragePooling2D(),
                       keras.layers.Dense(100, activation='relu'), keras.layers.Dropout(0.3),
                       keras.layers.Dense(6))
  keras_model.save(tmp_path / 'model.keras')
  keras_model.save(tmp_path / 'model.h5')
  x = images()
  for source in (tmp_path / 'model.keras', tmp_path / 'model.h5'):
    model, variables, size = weights.keras_to_ours('xception', source)
    assert (model.num_classes, model.fc_layers, model.fc_activation, model.pooling,
            model.dropout_rate, size) == (6, (100,), 'relu', 'avg', 0.3, SIZE)
    difference = relative_difference(model, variables, keras_model, x)
    print(f'{source.name}: relative logits difference {difference:.1e}')
    assert difference < TOLERANCE


@pytest.mark.long(seconds=20)
def test_max_pooling_linear_hidden_layers_and_softmax_heads(backbone, tmp_path):
  x = images(seed=2)
  pooled_inside = keras.applications.Xception(weights=None, include_top=False, pooling='max',
                                              input_shape=(SIZE, SIZE, 3))
  pooled_inside.set_weights(backbone.get_weights())
  relu_by_activation = nested(pooled_inside, keras.layers.Dense(32),
                              keras.layers.Activation('relu'), keras.layers.Dropout(0.5),
                              keras.layers.Dense(3, activation='softmax'))
  relu_by_activation.save(tmp_path / 'activation.keras')
  model, variables, _ = weights.keras_to_ours('xception', tmp_path / 'activation.keras')
  assert (model.pooling, model.fc_layers, model.fc_activation, model.num_classes) == \
      ('max', (32,), 'relu', 3)
  # Softmax is what the model's probabilities are; our logits give the same after softmax.
  logits = jitted(model)(variables, x)
  expected = relu_by_activation.predict(x, verbose=0)
  print(f'max pooling, hidden ReLU by Activation, softmax head: probabilities differ by '
        f'{float(np.abs(jax.nn.softmax(logits) - expected).max()):.1e}')
  np.testing.assert_allclose(jax.nn.softmax(logits), expected, atol=TOLERANCE)

  # Inlined: the application's layers in the fine-tuned model itself, linear hidden layers.
  inputs = keras.Input((SIZE, SIZE, 3))
  inlined_backbone = keras.applications.Xception(weights=None, include_top=False,
                                                 input_tensor=inputs)
  inlined_backbone.set_weights(backbone.get_weights())
  y = keras.layers.GlobalMaxPooling2D()(inlined_backbone.output)
  y = keras.layers.Dense(16)(y)
  y = keras.layers.Dense(8)(y)
  inlined = keras.Model(inputs, keras.layers.Dense(5)(y))
  inlined.save(tmp_path / 'inlined.h5')
  model, variables, _ = weights.keras_to_ours('xception', tmp_path / 'inlined.h5')
  assert (model.pooling, model.fc_layers, model.fc_activation, model.dropout_rate) == \
      ('max', (16, 8), None, 0.0)
  difference = relative_difference(model, variables, inlined, x)
  print(f'inlined, max pooling, two linear hidden layers: relative logits difference '
        f'{difference:.1e}')
  assert difference < TOLERANCE


@pytest.mark.long(seconds=20)
def test_an_inception_v3_classifier_fine_tuned_in_keras():
  base = keras.applications.InceptionV3(weights=None, include_top=False,
                                        input_shape=(SIZE, SIZE, 3))
  randomize_batch_norm(base, seed=4)
  keras_model = nested(base, keras.layers.GlobalAveragePooling2D(), keras.layers.Dropout(0.2),
                       keras.layers.Dense(4))
  model, variables, _ = weights.keras_to_ours('inception_v3', keras_model)
  assert (model.num_classes, model.fc_layers, model.dropout_rate) == (4, (), 0.2)
  difference = relative_difference(model, variables, keras_model, images(seed=3))
  print(f'Inception-V3, average pooling, dropout, 4 classes: relative logits difference '
        f'{difference:.1e}')
  assert difference < TOLERANCE


def test_a_layer_without_counterpart_is_named(backbone):
  with_norm = nested(backbone, keras.layers.GlobalAveragePooling2D(),
                     keras.layers.BatchNormalization(name='head_norm'), keras.layers.Dense(6))
  with pytest.raises(ValueError, match=r'^Keras layer head_norm \(BatchNormalization\) has no '
                                       r'counterpart in our classifier head: expected global '
                                       r'pooling, Dense, Dropout or Activation\.$'):
    weights.keras_to_ours('xception', with_norm)
  early_dropout = nested(backbone, keras.layers.GlobalAveragePooling2D(),
                         keras.layers.Dropout(0.5, name='early'), keras.layers.Dense(64),
                         keras.layers.Dense(6))
  with pytest.raises(ValueError, match=r'^Keras layer early \(Dropout\) has no counterpart in our '
                                       r'classifier head: dropout is applied only before the '
                                       r'last Dense layer\.$'):
    weights.keras_to_ours('xception', early_dropout)
  with pytest.raises(ValueError, match=r'has no layer mixed10: it is not built on '
                                       r'keras\.applications\.InceptionV3'):
    weights.keras_to_ours('inception_v3', backbone)


def test_timm_weights_with_another_number_of_classes():
  narrow = models.InceptionV3.tiny_options
  model = weights.timm_model('inception_v3', num_classes=7, **narrow)
  variables = random_variables(model)
  state = timm_state_dict('inception_v3', model, variables)
  assert state['fc.weight'].shape[0] == 7
  imported_model, imported = weights.timm_to_ours('inception_v3', state, **narrow)
  assert imported_model.num_classes == 7
  jax.tree.map(np.testing.assert_array_equal, imported, variables)
