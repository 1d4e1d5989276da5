r"""The Xception paper's ImageNet comparisons and ablations: one variant, one switch.

Every variant is configs/imagenet.py (the paper's ImageNet recipe) with one change:

| variant | change | paper |
|---|---|---|
| xception | none: the baseline | Table 1, Fig. 6 |
| inception_v3 | configs/inception_v3.py: Inception-V3, same recipe (wd 4e-5, dropout 0.2, no aux head) | Table 1, Fig. 6 |
| no_residual | model_kwargs.residual=False | Fig. 9 |
| relu, elu | model_kwargs.intermediate_activation='relu' / 'elu' (between depthwise and pointwise) | Fig. 10 |
| segments_1, segments_2, segments_4, segments_8 | model_kwargs.channel_segments: the spatial 3×3 conv over N channel groups; 1 = a regular conv, 'xception' = depthwise (a group per channel) | §1.2, §5 spectrum |

Add ',quick' for a quickstart-size run on the bundled digits (minutes on 2 CPU
cores, evaluated every epoch: a training profile to plot; see
config_defaults.quick_variant) or ',local' for a seconds-long smoke run.
The fully-connected layers of Figs. 7–8 are a JFT experiment: configs/jft_like.py:fc.

  python -m xception_jax.main --config=configs/ablations.py:no_residual --workdir=runs/no_residual
  python -m xception_jax.sweep --root=runs/fig9 configs/ablations.py:xception,quick \
      configs/ablations.py:no_residual,quick
"""
import pathlib

from xception_jax.trainer.config_defaults import load_config, local_variant, quick_variant, split_variant

SEGMENTS = (1, 2, 4, 8)  # The divisors of every Xception width (all multiples of 8).
MODEL_SWITCHES = {
    'xception': {},
    'no_residual': {'residual': False},
    'relu': {'intermediate_activation': 'relu'},
    'elu': {'intermediate_activation': 'elu'},
    **{f'segments_{n}': {'channel_segments': n} for n in SEGMENTS},
}
VARIANTS = (*MODEL_SWITCHES, 'inception_v3')


def get_config(variant: str = 'xception'):
  words, size = split_variant(variant, VARIANTS)
  if len(words) > 1:
    raise ValueError(f'Choose one of {", ".join(VARIANTS)} (got {variant!r}), optionally '
                     'with ,quick or ,local.')
  arm = words[0] if words else 'xception'
  here = pathlib.Path(__file__).parent
  if arm == 'inception_v3':
    c = load_config(here / 'inception_v3.py')
  else:
    c = load_config(here / 'imagenet.py')
    c.model_kwargs.update(MODEL_SWITCHES[arm])
  if size == 'quick':
    return quick_variant(c)
  return local_variant(c) if size == 'local' else c
