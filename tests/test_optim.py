"""Learning-rate schedules, optimizers in TF's form, EMA, losses and regularisers."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from xception_jax.trainer import losses, optim
from xception_jax.trainer.config_defaults import base_config


def config(**overrides):
  c = base_config()
  c.update(overrides)
  return c


def test_staircase_decay_every_two_epochs_at_its_boundaries():
  schedule = optim.learning_rate_schedule(config(batch_size=100, learning_rate=0.045,
                                                 lr_decay_rate=0.94, lr_decay_epochs=2), 10)
  expected = {0: 0.045, 19: 0.045, 20: 0.045 * 0.94, 39: 0.045 * 0.94, 40: 0.045 * 0.94 ** 2}
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr, rel=1e-6), step


def test_decay_every_n_examples_jft_recipe():
  # JFT: 0.001 × 0.9 every 3,000,000 examples; at batch 1,000 that is every 3,000 steps.
  c = config(batch_size=1000, learning_rate=0.001, lr_decay_rate=0.9,
             lr_decay_examples=3_000_000)
  schedule = optim.learning_rate_schedule(c, steps_per_epoch=123)
  assert float(schedule(2999)) == pytest.approx(0.001)
  assert float(schedule(3000)) == pytest.approx(0.0009)
  assert float(schedule(6000)) == pytest.approx(0.00081)


def test_warmup_then_decay_and_batch_scaling():
  c = config(batch_size=2048, reference_batch_size=1920, learning_rate=0.045,
             lr_decay_rate=0.94, lr_decay_epochs=2, warmup_epochs=1)
  peak = 0.045 * 2048 / 1920
  assert optim.peak_learning_rate(c) == pytest.approx(0.048)
  schedule = optim.learning_rate_schedule(c, steps_per_epoch=10)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(peak / 2)
  assert float(schedule(10)) == pytest.approx(peak)
  assert float(schedule(29)) == pytest.approx(peak)
  assert float(schedule(30)) == pytest.approx(peak * 0.94)


def run_steps(tx, params, grads):
  state = tx.init(params)
  history = []
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    history.append(params)
  return history


def test_rmsprop_is_tensorflows_form():
  # Learning rate 0.1 then 0.05: TF applies it inside the momentum accumulator.
  lrs = [0.1, 0.05]
  c = config(optimizer='rmsprop', rmsprop_decay=0.9, rmsprop_epsilon=1.0, momentum=0.9)
  tx = optim.optimizer(c, lambda step: jnp.asarray(lrs)[step])
  w = np.array([1.0, -2.0], np.float32)
  grads = [np.array([0.5, -3.0], np.float32), np.array([2.0, 1.0], np.float32)]
  ours = run_steps(tx, jnp.asarray(w), [jnp.asarray(g) for g in grads])
  ms, mom = np.ones(2), np.zeros(2)  # TF starts the mean square at 1.
  for lr, g, got in zip(lrs, grads, ours):
    ms = 0.9 * ms + 0.1 * g ** 2
    mom = 0.9 * mom + lr * g / np.sqrt(ms + 1.0)  # ε inside the square root.
    w = w - mom
    np.testing.assert_allclose(got, w, rtol=1e-6)


def test_sgd_momentum_is_tensorflows_form():
  lrs = [0.1, 0.05]
  tx = optim.optimizer(config(optimizer='sgd', momentum=0.9), lambda s: jnp.asarray(lrs)[s])
  w = np.array([1.0, -2.0], np.float32)
  grads = [np.array([0.5, -3.0], np.float32), np.array([2.0, 1.0], np.float32)]
  ours = run_steps(tx, jnp.asarray(w), [jnp.asarray(g) for g in grads])
  accumulator = np.zeros(2)
  for lr, g, got in zip(lrs, grads, ours):
    accumulator = 0.9 * accumulator + g
    w = w - lr * accumulator
    np.testing.assert_allclose(got, w, rtol=1e-6)


def test_gradient_clipping_by_global_norm():
  tx = optim.optimizer(config(optimizer='sgd', momentum=0.0, grad_clip_norm=2.0), lambda s: 1.0)
  g = {'a': jnp.array([3.0, 0.0]), 'b': jnp.array([4.0])}   # Global norm 5.
  updates, _ = tx.update(g, tx.init(g), g)
  np.testing.assert_allclose(updates['a'], [-1.2, 0.0], rtol=1e-6)
  np.testing.assert_allclose(updates['b'], [-1.6], rtol=1e-6)


def test_unknown_optimizer_is_rejected():
  with pytest.raises(ValueError, match="Unknown optimizer 'lamb'"):
    optim.optimizer(config(optimizer='lamb'), lambda s: 1.0)


def test_l2_penalty_and_mask_cover_only_kernels():
  params = {'conv': {'kernel': jnp.full((2, 2), 2.0)},
            'bn': {'scale': jnp.full((3,), 5.0), 'bias': jnp.full((3,), 7.0)},
            'dense': {'kernel': jnp.full((3,), 1.0), 'bias': jnp.full((1,), 9.0)}}
  # wd/2 · (4 · 2² + 3 · 1²) = 0.5 · 0.1 · 19.
  assert float(optim.l2_penalty(params, 0.1)) == pytest.approx(0.95)
  grads = jax.grad(optim.l2_penalty)(params, 0.1)
  np.testing.assert_allclose(grads['conv']['kernel'], 0.2)
  assert float(jnp.abs(grads['bn']['scale']).sum() + jnp.abs(grads['dense']['bias']).sum()) == 0
  assert optim.kernel_mask(params) == {'conv': {'kernel': True},
                                       'bn': {'scale': False, 'bias': False},
                                       'dense': {'kernel': True, 'bias': False}}


def test_label_smoothing_matches_hand_computation():
  logits = jnp.array([[2.0, 0.0, -1.0]])
  log_p = np.log(np.exp([2.0, 0.0, -1.0]) / np.exp([2.0, 0.0, -1.0]).sum())
  targets = 0.9 * np.array([1, 0, 0]) + 0.1 / 3
  got = losses.cross_entropy(logits, jnp.array([0]), 3, label_smoothing=0.1)
  assert float(got[0]) == pytest.approx(-(targets * log_p).sum(), rel=1e-6)
  plain = losses.cross_entropy(logits, jnp.array([0]), 3)
  assert float(plain[0]) == pytest.approx(-log_p[0], rel=1e-6)


def test_ema_decay_warms_up_then_saturates():
  assert float(optim.ema_decay(0, 0.9999, True)) == pytest.approx(0.1)
  assert float(optim.ema_decay(90, 0.9999, True)) == pytest.approx(0.91)
  assert float(optim.ema_decay(10 ** 6, 0.9999, True)) == pytest.approx(0.9999)
  assert float(optim.ema_decay(0, 0.9999, False)) == pytest.approx(0.9999)
  avg = optim.ema_update({'w': jnp.array(1.0)}, {'w': jnp.array(3.0)}, jnp.asarray(0.75))
  assert float(avg['w']) == pytest.approx(0.75 * 1.0 + 0.25 * 3.0)


def test_total_steps_from_epochs_or_override():
  assert optim.total_steps(config(num_epochs=2.5, total_steps=0), 10) == 25
  assert optim.total_steps(config(num_epochs=2.5, total_steps=7), 10) == 7
  assert isinstance(base_config(), ml_collections.ConfigDict)
