"""Every model works as a Flax NNX module through `flax.nnx.bridge.ToNNX` (the README's example):
inference equal to the linen model's, and a training step that updates the parameters and the
BN statistics and draws dropout from the module's rngs."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from helpers import random_variables
from xception_jax import models


@pytest.mark.long(seconds=14)
@pytest.mark.parametrize('name', models.list_models())
def test_nnx_inference_and_training_step(name):
  cls = models.model_class(name)
  linen_model = models.create_model(name, num_classes=5, **cls.tiny_options)
  size = cls.min_input_size
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, size, size, 3), minval=-1, maxval=1)
  variables = random_variables(linen_model, size)

  model = nnx.bridge.ToNNX(linen_model, rngs=nnx.Rngs(params=0, dropout=1)).lazy_init(x)
  nnx.update(model, nnx.bridge.variables.linen_vars_to_nnx_attrs(variables))
  logits = nnx.jit(lambda m, x: m(x, train=False))(model, x)
  np.testing.assert_allclose(logits, jax.jit(linen_model.apply)(variables, x), rtol=1e-5,
                             atol=1e-5)

  # Learning rate 0 at the first step, so that the second sees the same parameters.
  optimizer = nnx.Optimizer(model, optax.sgd(lambda step: jnp.where(step == 0, 0.0, 0.01)),
                            wrt=nnx.Param)
  labels = jnp.arange(4) % 5

  @nnx.jit
  def train_step(model, optimizer, x, labels):
    def loss_fn(model):
      logits = model(x, train=True, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits
    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, logits

  _, first = train_step(model, optimizer, x, labels)
  loss, second = train_step(model, optimizer, x, labels)
  assert np.isfinite(float(loss))
  # The same parameters and batch statistics: only dropout, drawn anew, tells them apart.
  assert np.abs(np.asarray(first) - np.asarray(second)).max() > 1e-3
  statistics = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  assert all(np.any(np.asarray(a) != b) for a, b in
             zip(statistics, jax.tree.leaves(variables['batch_stats'])))
  params = jax.tree.leaves(nnx.state(model, nnx.Param))
  assert all(np.any(np.asarray(a) != b) for a, b in
             zip(params, jax.tree.leaves(variables['params'])))
