r"""Quickstart: a small Xception on scikit-learn's bundled handwritten digits (offline).

0.25-width Xception with 2 middle-flow modules at 71×71, trained for 4 epochs
on the 1,442 training digits and evaluated on the 355 held-out ones; ≥ 95 %
top-1 with the averaged weights in about a minute on 2 CPU cores.

  python -m xception_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
"""
from xception_jax.trainer.config_defaults import base_config


def get_config():
  c = base_config()
  c.model = 'xception'
  c.model_kwargs.width_multiplier = 0.25
  c.model_kwargs.middle_flow_repeats = 2
  c.model_kwargs.dropout_rate = 0.2
  # BN moving averages at Keras's momentum 0.99 lag ~100 steps behind the weights, a large
  # part of a short run: evaluations would measure the lag (at step 90: 38 % instead of 98 %).
  c.model_kwargs.bn_momentum = 0.9
  c.dataset = 'digits'
  c.train_split, c.eval_split = 'train', 'test'
  c.image_size = 71
  # Digits are centred and not mirror-symmetric: milder crops, no flips.
  c.augment.area_range = (0.6, 1.0)
  c.augment.min_object_covered = 0.6
  c.augment.flip = False
  c.batch_size = 32
  c.num_epochs = 4
  c.optimizer = 'sgd'
  c.learning_rate = 0.045
  c.lr_decay_rate = 0.94
  c.lr_decay_epochs = 1
  c.weight_decay = 1e-5
  c.ema_decay = 0.99
  c.batch_norm = 'global'
  c.log_every_steps = 45
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 90
  c.keep_checkpoints = 2
  return c
