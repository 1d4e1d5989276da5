"""Optimisers, learning-rate schedules and regularisers of the papers' recipes (optax).

- SGD with momentum (Xception ImageNet): optax.sgd; momentum accumulates raw
  gradients and the learning rate scales the step, as TF's MomentumOptimizer.
- RMSprop in TensorFlow's form (Inception, Xception JFT): optax.rmsprop with
  ε inside the square root, the accumulator starting at 1, and the learning
  rate applied before the momentum trace — exactly TF's RMSPropOptimizer.
- Adam / AdamW for fine-tuning.
- Staircase exponential decay every N epochs or every N examples (the
  papers'), or cosine decay to zero over the run (fine-tuning); optional
  linear warm-up; learning rate scaled by global batch / reference batch.
- Parameter groups (param_groups.py): frozen parameters, per-group
  learning-rate multipliers.
- Weight decay as an L2 term, wd/2 · Σ‖kernel‖² (tf.nn.l2_loss convention, so
  the gradient is wd · kernel), on conv and dense kernels only.
- Polyak averaging with TF's warm-up.
The losses are in losses.py.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from xception_jax.trainer import param_groups


def steps_per_decay(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """Optimizer steps between learning-rate decays (`lr_decay_epochs` or `_examples`)."""
  if config.get('lr_decay_examples'):
    return max(1, round(config.lr_decay_examples / config.batch_size))
  return max(1, round(config.lr_decay_epochs * steps_per_epoch))


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """`learning_rate` scaled by batch_size / reference_batch_size (linear scaling rule)."""
  reference = config.get('reference_batch_size') or config.batch_size
  return config.learning_rate * config.batch_size / reference


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up to the peak, then from the warm-up's end staircase exponential decay
  (`lr_schedule='exponential'`) or cosine decay to 0 at the last step ('cosine')."""
  peak = peak_learning_rate(config)
  warmup_steps = round(config.get('warmup_epochs', 0) * steps_per_epoch)
  if config.get('lr_schedule', 'exponential') == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup_steps, max(total_steps(config, steps_per_epoch), warmup_steps + 1))
  decay = optax.exponential_decay(peak, transition_steps=steps_per_decay(config, steps_per_epoch),
                                  decay_rate=config.lr_decay_rate, staircase=True)
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([warmup, decay], boundaries=[warmup_steps])


def optimizer(config: ml_collections.ConfigDict,
              schedule: optax.Schedule) -> optax.GradientTransformation:
  """The config's optimizer, preceded by global-norm clipping when `grad_clip_norm` is set,
  per parameter group when `freeze` or `lr_multipliers` are set."""
  name = config.optimizer
  if name == 'sgd':
    tx = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.get('nesterov',
                                                                                   False))
  elif name == 'rmsprop':
    tx = optax.rmsprop(schedule, decay=config.rmsprop_decay, eps=config.rmsprop_epsilon,
                       initial_scale=1.0, eps_in_sqrt=True, momentum=config.momentum or None)
  elif name == 'adam':
    tx = optax.adam(schedule)
  elif name == 'adamw':
    tx = optax.adamw(schedule, weight_decay=config.adamw_weight_decay,
                     mask=lambda params: kernel_mask(params))
  else:
    raise ValueError(f"Unknown optimizer {name!r}; choose 'sgd', 'rmsprop', 'adam' or 'adamw'.")
  if config.get('grad_clip_norm'):
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return param_groups.grouped(tx, config.get('freeze', ''), config.get('lr_multipliers', ''))


def kernel_mask(params: Any) -> Any:
  """True for conv and dense kernels (leaves named 'kernel'), False for BN and biases."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({path: path[-1] == 'kernel' for path in flat})


def l2_penalty(params: Any, weight_decay: float) -> jnp.ndarray:
  """weight_decay / 2 · Σ‖kernel‖² over conv and dense kernels."""
  if not weight_decay:
    return jnp.zeros([], jnp.float32)
  kernels = [leaf for path, leaf in traverse_util.flatten_dict(params).items()
             if path[-1] == 'kernel']
  return 0.5 * weight_decay * sum(jnp.sum(jnp.square(k.astype(jnp.float32))) for k in kernels)


def ema_decay(step: jnp.ndarray, decay: float, warmup: bool) -> jnp.ndarray:
  """Polyak-averaging decay at `step`: min(decay, (1 + step) / (10 + step)) with warm-up.

  The warm-up (TF's ExponentialMovingAverage with num_updates) keeps short runs
  from being dominated by the initial weights.
  """
  if not warmup:
    return jnp.asarray(decay, jnp.float32)
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(average: Any, new: Any, decay: jnp.ndarray) -> Any:
  """decay · average + (1 − decay) · new, leaf by leaf."""
  return jax.tree.map(lambda a, n: a + (1.0 - decay) * (n - a), average, new)


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """`total_steps` if set, else ceil(num_epochs · steps_per_epoch)."""
  if config.get('total_steps'):
    return int(config.total_steps)
  return math.ceil(config.num_epochs * steps_per_epoch)
