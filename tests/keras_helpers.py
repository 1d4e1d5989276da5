"""Keras reference models with random, non-default weights, and the legacy h5 format."""
import h5py
import keras
import numpy as np


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
