r"""inception_v4 on ImageNet with the Inception-v4 paper's RMSprop recipe (§4).

TF-form RMSprop (decay 0.9, ε 1.0 inside the square root, momentum 0.9),
learning rate 0.045 ×0.94 every 2 epochs scaled from the paper's 640 images
per step (20 replicas × 32) to 1,024, weight decay 4e-5, label smoothing 0.1,
evaluation of the Polyak-averaged weights, 299 px, 100 epochs.

  python -m xception_jax.main --config=configs/inception_v4.py --workdir=runs/inception_v4
"""
from xception_jax.trainer.config_defaults import base_config, inception_rmsprop_recipe, local_variant


def get_config(variant: str = ''):
  c = inception_rmsprop_recipe(base_config())
  c.model = 'inception_v4'
  return local_variant(c) if variant == 'local' else c
