r"""Inception-V3 under the Xception paper's recipe (§4.3): the Table 1 / Figure 6 comparison.

Identical to configs/imagenet.py (SGD 0.045 ×0.94 every 2 epochs, momentum
0.9, EMA evaluation, 299 px, batch 2,048 scaled from ~1,920) except the
weight decay, 4e-5 as the Inception-V3 paper; no auxiliary tower (the
paper's Inception-V3 numbers are without it); dropout 0.2 (keep 0.8).

  python -m xception_jax.main --config=configs/inception_v3.py --workdir=runs/inception_v3
"""
import pathlib

from xception_jax.trainer.config_defaults import load_config, local_variant


def get_config(variant: str = ''):
  # The Xception recipe file sits next to this one; load it by path (configs/ is no package).
  c = load_config(pathlib.Path(__file__).with_name('imagenet.py'))
  c.model = 'inception_v3'
  c.model_kwargs = {'dropout_rate': 0.2, 'aux_logits': False}
  c.weight_decay = 4e-5
  return local_variant(c) if variant == 'local' else c
