"""Keras reference models with random, non-default weights, and the legacy h5 format."""
import contextlib
from typing import Iterator

import h5py
import jax
import keras
import numpy as np
from keras.src.backend.jax import random as keras_jax_random
from keras.src.initializers import constant_initializers
from keras.src.random.seed_generator import draw_seed


@contextlib.contextmanager
def numpy_initial_values() -> Iterator[None]:
  """Within the context, Keras's random, zeros and ones initialisers compute in numpy.

  On the JAX backend each initialiser call is an XLA program compiled for its shape, so
  building an application costs more than using it (Inception-ResNet-v2: 15.4 s, 2.6 s
  with numpy), and so does loading a file, which overwrites every initial value. The values
  stay seeded as Keras seeds them (`keras.utils.set_random_seed`, a layer's own seed) and
  keep their distributions; inside jitted code (a traced seed) Keras's own functions run.
  """
  def floatx(dtype):
    return dtype or keras.config.floatx()

  def seeded(keras_function, sample):
    def draw(shape, *args, dtype=None, seed=None, **kwargs):
      if isinstance(seed, jax.core.Tracer):
        return keras_function(shape, *args, dtype=dtype, seed=seed, **kwargs)
      generator = np.random.default_rng(np.asarray(draw_seed(seed)).astype(np.uint32))
      return sample(generator, shape, *args, **kwargs).astype(floatx(dtype))
    return draw

  def truncated(generator, shape, mean=0.0, stddev=1.0):
    x = generator.standard_normal(shape)
    while (outside := np.abs(x) > 2).any():  # Keras truncates at two standard deviations.
      x[outside] = generator.standard_normal(outside.sum())
    return x * stddev + mean

  replacements = {
      (keras_jax_random, 'uniform'): seeded(
          keras_jax_random.uniform,
          lambda g, shape, minval=0.0, maxval=1.0: g.uniform(minval, maxval, shape)),
      (keras_jax_random, 'normal'): seeded(
          keras_jax_random.normal,
          lambda g, shape, mean=0.0, stddev=1.0: g.normal(mean, stddev, shape)),
      (keras_jax_random, 'truncated_normal'): seeded(keras_jax_random.truncated_normal,
                                                     truncated),
      (constant_initializers.Zeros, '__call__'):
          lambda self, shape, dtype=None: np.zeros(shape, floatx(dtype)),
      (constant_initializers.Ones, '__call__'):
          lambda self, shape, dtype=None: np.ones(shape, floatx(dtype)),
  }
  saved = {key: getattr(*key) for key in replacements}
  for (owner, name), value in replacements.items():
    setattr(owner, name, value)
  try:
    yield
  finally:
    for (owner, name), value in saved.items():
      setattr(owner, name, value)


def randomize_batch_norm(model, seed: int) -> None:
  """Gives every BN layer random γ, β and moving statistics (defaults would hide bugs)."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      n = layer.moving_mean.shape[0]
      layer.moving_mean.assign(rng.normal(0, 0.5, n).astype('float32'))
      layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype('float32'))
      if layer.scale:
        layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype('float32'))
      layer.beta.assign(rng.normal(0, 0.2, n).astype('float32'))


def save_legacy_weights(model, path) -> None:
  """Writes `model`'s weights in the Keras 2 h5 layout of the official ImageNet files."""
  from keras.src.legacy.saving import legacy_h5_format
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
