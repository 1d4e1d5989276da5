r"""Xception on ImageNet, the paper's recipe (Chollet 2017, §4.2–4.3).

SGD, momentum 0.9, learning rate 0.045 decayed ×0.94 every 2 epochs
(staircase), weight decay 1e-5, dropout 0.5 before the classifier, no
auxiliary head, evaluation of the Polyak-averaged weights, 299×299 inputs.

Batch: the paper does not state it; it trained on 60 GPUs synchronously with
Inception-V3's recipe (32 per replica), i.e. ~1,920 images per step at
lr 0.045. We use 2,048 (it divides over 8 to 1,024 devices) and scale the
learning rate linearly: 0.045 × 2048 / 1920 = 0.048.
Epochs: 100. With ×0.94 every 2 epochs the rate has fallen to 4.5 % of its
start by epoch 100 (0.94^50), where the paper's Figure 6 curves have
flattened; longer runs gain little.

  python -m xception_jax.main --config=configs/imagenet.py --workdir=runs/xception \
      --config.manual_dir=/data/imagenet_archives --config.data_dir=/data/tfds
  python -m xception_jax.main --config=configs/imagenet.py:local --workdir=/tmp/smoke
"""
from xception_jax.trainer.config_defaults import base_config, local_variant


def get_config(variant: str = ''):
  c = base_config()
  c.model = 'xception'
  c.model_kwargs.dropout_rate = 0.5
  c.dataset = 'imagenet2012'
  c.image_size = 299
  c.batch_size = 2048
  c.num_epochs = 100
  c.optimizer = 'sgd'
  c.momentum = 0.9
  c.learning_rate = 0.045
  c.reference_batch_size = 1920
  c.lr_decay_rate = 0.94
  c.lr_decay_epochs = 2
  c.weight_decay = 1e-5
  c.ema_decay = 0.9999
  c.batch_norm = 'device'
  c.log_every_steps = 100
  c.eval_every_steps = 2 * 625      # About every 2 epochs (625 steps per epoch at 2,048).
  c.checkpoint_every_steps = 1000
  return local_variant(c) if variant == 'local' else c
