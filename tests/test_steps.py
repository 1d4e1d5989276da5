"""Training step: EMA, auxiliary loss, and sharded execution equal to one device."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from helpers import initial_state
from xception_jax import models
from xception_jax.trainer import sharding, steps


def tiny_xception():
  return models.create_model('xception', num_classes=5, width_multiplier=0.25,
                             middle_flow_repeats=1, dropout_rate=0.0)


def batch(n=16, size=71, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32),
          'label': rng.integers(0, 5, n).astype(np.int32)}


def one_step(model, mesh, data, bn_groups, tx=None, state=None):
  """Runs one jitted, sharded training step on `mesh`; returns the new state (host arrays)."""
  tx = tx or optax.sgd(0.1, momentum=0.9)
  state = state or initial_state(model, tx, 71)
  replicated = sharding.replicated(mesh)
  state = jax.device_put(state, replicated)
  config = steps.StepConfig(num_classes=5, weight_decay=1e-5, bn_groups=bn_groups)
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx,
                                   schedule=lambda s: 0.1, config=config),
                 out_shardings=(replicated, replicated))
  new_state, metrics = step(state, sharding.global_batch(data, mesh))
  return jax.device_get(new_state), jax.device_get(metrics)


def assert_trees_close(a, b, atol):
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b))
  assert max(diffs) < atol, max(diffs)


def assert_updates_close(start, a, b, rtol):
  """Each leaf's update a − start equals b − start within rtol of its norm."""
  errors = jax.tree.map(lambda s, x, y: float(np.linalg.norm(x - y) / np.linalg.norm(x - s)),
                        start, a, b)
  assert max(jax.tree.leaves(errors)) < rtol, max(jax.tree.leaves(errors))


@pytest.mark.long(seconds=45)
def test_sharded_step_on_8_devices_equals_one_device_and_per_device_batch_norm_differs():
  """In float64, where it is exact to ~1e-12: the early BN biases' gradients cancel so
  heavily that float32 updates of this tiny model are off their float64 values by
  1e-4 to 2e-2 depending on the batch, whatever the device count."""
  assert jax.device_count() == 8
  meshes = {n: Mesh(np.array(jax.devices()[:n]), ('data',)) for n in (1, 8)}
  with jax.enable_x64(True):
    model = tiny_xception().clone(dtype=jnp.float64, param_dtype=jnp.float64)
    data = jax.tree.map(lambda a: a.astype(np.float64) if a.dtype == np.float32 else a,
                        batch())
    start = initial_state(model, optax.sgd(0.1, momentum=0.9), 71)
    runs = {(devices, bn_groups): one_step(model, meshes[devices], data, bn_groups, state=start)
            for bn_groups in (1, 8) for devices in (1, 8)}
  for bn_groups in (1, 8):
    (one, m1), (eight, m8) = runs[1, bn_groups], runs[8, bn_groups]
    assert m1['loss'] == pytest.approx(m8['loss'], rel=1e-12)
    assert_updates_close(start.params, one.params, eight.params, rtol=1e-9)
    assert_trees_close(one.batch_stats, eight.batch_stats, atol=1e-12)
  # Per-device BN on 8 devices against global BN: the moving means agree (the mean of the
  # slices' means is the global mean) ...
  grouped, whole = runs[8, 8][0], runs[8, 1][0]
  mean = lambda s: s['block1_conv1']['bn']['mean']
  np.testing.assert_allclose(mean(grouped.batch_stats), mean(whole.batch_stats), atol=1e-12)
  # ... but normalising by slice statistics changes the gradients.
  kernel = lambda s: s.params['block1_conv1']['conv']['kernel']
  assert np.abs(kernel(grouped) - kernel(whole)).max() > 1e-6


@pytest.mark.long
def test_ema_of_params_and_batch_stats_after_a_step():
  model, data = tiny_xception(), batch()
  mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
  start = initial_state(model, optax.sgd(0.1), 71)
  new, _ = one_step(model, mesh, data, 1, state=start, tx=optax.sgd(0.1))
  # Step 0 with warm-up: decay = min(0.9999, 1/10) = 0.1.
  expected = jax.tree.map(lambda old, cur: 0.1 * old + 0.9 * cur, start.params, new.params)
  assert_trees_close(new.ema_params, expected, atol=1e-6)
  expected = jax.tree.map(lambda old, cur: 0.1 * old + 0.9 * cur, start.batch_stats,
                          new.batch_stats)
  assert_trees_close(new.ema_batch_stats, expected, atol=1e-6)
  assert int(new.step) == 1


class AuxNet(nn.Module):
  """Returns (logits, aux logits) in training, like Inception-V3 with its aux head."""

  @nn.compact
  def __call__(self, x, train=False):
    features = x.mean(axis=(1, 2))
    logits = nn.Dense(5, name='head')(features)
    if not (train or self.is_initializing()):
      return logits
    aux = nn.Dense(5, name='aux_head')(features * 2)  # Created at init, used in training.
    return (logits, aux) if train else logits


def test_aux_logits_add_weighted_loss():
  model, data = AuxNet(), batch(n=8, size=8)
  state = initial_state(model, optax.sgd(0.0), 8)
  config = steps.StepConfig(num_classes=5, aux_loss_weight=0.4)
  _, metrics = jax.jit(functools.partial(  # Jitted: op by op, XLA compiles every operation.
      steps.train_step, model=model, tx=optax.sgd(0.0), schedule=lambda s: 0.0,
      config=config))(state, jax.tree.map(jnp.asarray, data))
  logits, aux = jax.jit(functools.partial(model.apply, train=True))({'params': state.params},
                                                                     data['image'])
  ce = optax.softmax_cross_entropy_with_integer_labels
  expected = ce(logits, data['label']).mean() + 0.4 * ce(aux, data['label']).mean()
  assert float(metrics['loss']) == pytest.approx(float(expected), rel=1e-6)
  assert float(metrics['cross_entropy']) == pytest.approx(float(ce(logits, data['label']).mean()),
                                                         rel=1e-6)


def test_eval_counts_respect_the_mask():
  logits = jnp.array([[5., 1, 0, 0, 0, 0], [0, 5., 4, 3, 2, 1], [0, 0, 0, 0, 0, 9.]])
  labels = jnp.array([0, 0, 5])
  counts = steps.classification_counts(logits, labels, jnp.array([1., 1., 0.]), 6)
  assert float(counts['top1']) == 1.0   # Example 2 is masked out.
  assert float(counts['top5']) == 1.0   # Label 0 is 6th for example 1.
