r"""Converts reference weights into an Orbax checkpoint of our variables.

  python -m xception_jax.convert --source=keras --model=xception \
      --input=xception_weights_tf_dim_ordering_tf_kernels.h5 --output=weights/xception_keras
  python -m xception_jax.convert --source=timm --model=inception_v4 \
      --input=model.safetensors --output=weights/inception_v4_timm

The output directory holds {'params', 'batch_stats'}; training configs point
`init_from` at it to fine-tune, and eval-only runs evaluate it directly.
Weights from timm fit `weights.timm_model(model)`, not the plain model.
"""
from __future__ import annotations

import jax
from absl import app, flags

from xception_jax import weights

_SOURCE = flags.DEFINE_enum('source', 'keras', ['keras', 'timm'], 'Where the weights come from.')
_MODEL = flags.DEFINE_string('model', 'xception', 'Registered model name.')
_INPUT = flags.DEFINE_string('input', None, 'Source file (.h5, .keras, .safetensors, ...).',
                             required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'New directory for the checkpoint.', required=True)

IMPORTERS = {'keras': weights.from_keras, 'timm': weights.from_timm}


def convert(source: str, model: str, input_path: str, output: str) -> int:
  """Converts and saves; returns the number of trainable parameters written."""
  variables = IMPORTERS[source](model, input_path)
  weights.save_variables(variables, output)
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def main(argv):
  del argv
  try:
    n = convert(_SOURCE.value, _MODEL.value, _INPUT.value, _OUTPUT.value)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    raise app.UsageError(str(e)) from None
  print(f'Wrote {n:,} trainable parameters of {_MODEL.value} to {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)
