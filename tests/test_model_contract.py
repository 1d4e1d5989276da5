"""The contract every registered model keeps, checked the same way for each of them.

Shapes at its minimum input and a larger odd one, the too-small input refused,
jit, finite gradients for every parameter in a training step, every BN
statistic updated, bfloat16 compute with float32 parameters and logits,
rematerialisation changing nothing, feature names, strides and channels as
the references' layers have them, and its tiny variant. The training step and
the inference run through `flax.nnx.bridge.ToNNX` as well: every model is an
NNX module too (the README's example).
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from helpers import (assert_trees_close, check_training_step, param_count, random_variables,
                     variable_shapes)
from xception_jax import models

NAMES = models.list_models()
# (spatial size, channels) of each feature map at 299×299, in the order of `feature_names`:
# the output shapes of the matching Keras layers (Xception, InceptionV3, InceptionResNetV2)
# and timm modules (inception_v4), and the paper's Figs. 10-15 for Inception-ResNet-v1.
FEATURES_AT_299 = {
    'xception': [(147, 64), (74, 128), (37, 256), (19, 728), (19, 728), (10, 2048)],
    'inception_v3': [(147, 64), (71, 192), (35, 288), (17, 768), (8, 2048)],
    'inception_v4': [(147, 64), (71, 192), (35, 384), (17, 1024), (8, 1536)],
    'inception_resnet_v1': [(147, 64), (71, 192), (35, 256), (17, 896), (8, 1792)],
    'inception_resnet_v2': [(147, 64), (71, 192), (35, 320), (17, 1088), (8, 2080), (8, 1536)],
}
LARGER_ODD_SIZE = 99


def test_every_registered_model_is_covered():
  assert sorted(FEATURES_AT_299) == NAMES


def tiny(name, **options):
  return models.create_model(name, **{**models.model_class(name).tiny_options, **options})


@pytest.mark.parametrize('name', NAMES)
def test_feature_names_strides_and_channels_at_299(name):
  model = models.create_model(name, include_top=False, pooling=None)
  x = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
  (out, features), _ = jax.eval_shape(lambda x: model.init_with_output(
      jax.random.PRNGKey(0), x, return_features=True), x)
  assert sorted(features) == sorted(model.feature_names)   # (jax returns dicts key-sorted)
  assert len(model.feature_strides) == len(model.feature_names)
  for feature_name, stride, (size, channels) in zip(
      model.feature_names, model.feature_strides, FEATURES_AT_299[name]):
    assert features[feature_name].shape == (2, size, size, channels), feature_name
    # VALID convs trim a few pixels, never a factor of two: s is the nearest power of two.
    assert 2 ** round(math.log2(299 / size)) == stride, (feature_name, stride, size)
  assert out.shape == features[model.feature_names[-1]].shape


@pytest.mark.parametrize('name', NAMES)
def test_tiny_variant_is_the_same_network_narrower(name):
  model_class = models.model_class(name)
  full, small = models.create_model(name), tiny(name)
  assert param_count(small, model_class.min_input_size) < param_count(full) / 8
  assert small.feature_names == full.feature_names


@functools.lru_cache(maxsize=None)
def tiny_setup(name):
  """A 5-class tiny model, its random variables and a batch at the model's minimum size."""
  model = tiny(name, num_classes=5)
  size = model.min_input_size
  variables = random_variables(model, size)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, size, size, 3), minval=-1, maxval=1)
  return model, variables, x


@pytest.mark.parametrize('name', NAMES)
def test_training_step_at_the_minimum_size(name):
  """A jitted NNX training step of the linen model: loss, gradients, BN statistics, dropout."""
  model, variables, x = tiny_setup(name)
  module = models.to_nnx(model, variables, nnx.Rngs(dropout=1))
  labels = jnp.arange(4) % 5

  @nnx.jit
  def step(module, x, labels):
    def loss_fn(module):
      logits = module(x, train=True, mutable=['batch_stats'])
      xent = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean()
      return xent, logits
    return nnx.value_and_grad(loss_fn, has_aux=True)(module)

  (loss, logits), grads = step(module, x, labels)
  assert logits.shape == (4, 5) and logits.dtype == jnp.float32
  state = {'batch_stats': nnx.state(module, nnx.BatchStat).to_pure_dict()}
  check_training_step(variables, loss, state, nnx.state(grads, nnx.Param).to_pure_dict())
  # The same parameters and batch: only dropout, drawn anew from the module's rngs, differs.
  _, again = step(module, x, labels)[0]
  assert np.abs(np.asarray(again) - np.asarray(logits)).max() > 1e-3


@pytest.mark.parametrize('name', NAMES)
def test_jitted_inference_at_a_larger_odd_size_and_too_small_inputs(name):
  model, variables, _ = tiny_setup(name)
  x = jax.random.uniform(jax.random.PRNGKey(3), (2, LARGER_ODD_SIZE, LARGER_ODD_SIZE + 6, 3),
                         minval=-1, maxval=1)
  logits, nnx_logits = nnx.jit(lambda m, v, x: (model.apply(v, x), m(x, train=False)))(
      models.to_nnx(model, variables), variables, x)
  assert logits.shape == (2, 5) and np.all(np.isfinite(logits))
  np.testing.assert_array_equal(nnx_logits, logits)  # The NNX module computes the same.
  backbone = model.clone(include_top=False, pooling='max')
  pooled, features = jax.jit(lambda v, x: backbone.apply(v, x, return_features=True))(
      variables, x)
  last = features[model.feature_names[-1]]
  np.testing.assert_allclose(pooled, last.max(axis=(1, 2)), rtol=1e-6)
  smallest = model.min_input_size
  with pytest.raises(ValueError, match=f'{name} needs inputs of at least {smallest}x{smallest} '
                                       f'pixels, got {smallest - 1}x{smallest + 5}'):
    model.apply(variables, jnp.zeros((1, smallest - 1, smallest + 5, 3)))
  with pytest.raises(ValueError, match='NHWC'):
    model.apply(variables, jnp.zeros((smallest, smallest, 3)))


@pytest.mark.parametrize('name', NAMES)
def test_bfloat16_compute_keeps_float32_parameters_and_logits(name):
  model, variables, x = tiny_setup(name)
  model16 = model.clone(dtype=jnp.bfloat16)
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(
      jax.eval_shape(lambda: model16.init(jax.random.PRNGKey(0), x[:1]))))
  both = jax.jit(lambda v, x: (model.apply(v, x, return_features=True),
                               model16.apply(v, x, return_features=True)))
  (logits, features), (logits16, features16) = both(variables, x)
  assert logits16.dtype == jnp.float32 and np.all(np.isfinite(logits16))
  for key, feature in features.items():
    assert features16[key].dtype == jnp.bfloat16
    # bfloat16 has an 8-bit mantissa: features agree to a few percent of their scale.
    scale = float(np.abs(feature).max())
    assert float(np.abs(features16[key].astype(np.float32) - feature).max()) < \
        0.05 * scale + 0.05, key


@pytest.mark.parametrize('name', NAMES)
def test_remat_keeps_parameters_values_and_gradients(name):
  """Inference-mode gradients: training-mode BN over the tiny models' last 1×1 maps of a
  small batch amplifies float32 rounding past any useful tolerance."""
  model, variables, x = tiny_setup(name)
  rematerialised = model.clone(execution=model.execution.replace(remat=True))
  assert variable_shapes(rematerialised, model.min_input_size) == \
      jax.tree.map(jnp.shape, variables)

  def gradients(m):
    loss = lambda params: jnp.sum(jnp.sin(m.apply({**variables, 'params': params}, x)))
    return jax.jit(jax.grad(loss))(variables['params'])

  assert_trees_close(gradients(rematerialised), gradients(model), tol=1e-5)
