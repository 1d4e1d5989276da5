r"""Prints a model's layer table: module path, output shape, parameters; then totals.

  python -m xception_jax.summary --model=xception --image_size=299 --depth=2
  python -m xception_jax.summary --model=xception --set=width_multiplier=0.25
"""
from __future__ import annotations

from absl import app, flags

from xception_jax import models
from xception_jax.tools import model_table

_MODEL = flags.DEFINE_string('model', 'xception', 'Registered model name.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 299, 'Square input size in pixels.')
_DEPTH = flags.DEFINE_integer('depth', 1, 'Deepest module level shown (1 = top-level blocks).')
_SET = flags.DEFINE_multi_string('set', [], 'Model option as key=value (Python literal).')


def main(argv):
  del argv
  try:
    model = models.create_model(_MODEL.value, **models.parse_options(_SET.value))
    print(model_table.format_summary(_MODEL.value, model, _IMAGE_SIZE.value, _DEPTH.value))
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  app.run(main)
