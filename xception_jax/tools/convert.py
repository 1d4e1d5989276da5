r"""Converts published or fine-tuned weights into a converted-weights directory.

  python -m xception_jax.convert --pretrained=xception.keras_in1k --output=weights/xception
  python -m xception_jax.convert --source=keras --model=xception --input=my_model.keras \
      --labels=classes.txt --output=weights/mine
  python -m xception_jax.convert --source=timm --model=inception_v4 \
      --input=model.safetensors --output=weights/inception_v4_timm
  python -m xception_jax.convert --list

The directory records the model and its options, the evaluation preprocessing
and the class names beside the variables, so `predict --weights=DIR`,
`--config.init_from=DIR` and eval-only runs need nothing else. A Keras source
may be an application or a fine-tuned model built on one (nested or inlined,
with a head of global pooling, Dense and Dropout layers). Class names: from
`--labels` (one per line), else ImageNet's for 1,000-class weights.
"""
from __future__ import annotations

from absl import app, flags

from xception_jax import weights
from xception_jax.models.inputs import RESIZE_METHODS
from xception_jax.weights import convert

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('pretrained', None, 'A pretrained tag (see --list).')
  flags.DEFINE_bool('list', False, 'List the pretrained tags and their sources.')
  flags.DEFINE_enum('source', 'keras', list(convert.SOURCES), 'Where the weights come from.')
  flags.DEFINE_string('model', 'xception', 'Registered model name.')
  flags.DEFINE_string('input', None, 'Source file (.h5, .keras, .safetensors, ...).')
  flags.DEFINE_string('output', None, 'New directory for the converted weights.')
  flags.DEFINE_string('labels', None, 'Text file with one class name per line.')
  flags.DEFINE_integer('image_size', None, "Evaluation input size (default: the Keras model's "
                       'fixed input size, else 299).')
  flags.DEFINE_float('crop_fraction', 0.875, 'Evaluation central-crop fraction.')
  flags.DEFINE_enum('resize', None, list(RESIZE_METHODS), 'Evaluation resize method (default: '
                    'bilinear for Keras, bicubic for timm, as each evaluates).')


def pretrained_table() -> str:
  rows = []
  for tag in weights.list_pretrained():
    info = weights.pretrained_info(tag)
    accuracy = f'top-1 {info.accuracy["top1"]:.1f}%' if info.include_top else 'no classifier'
    rows.append(f'{tag:<38} {info.source:<6} {accuracy:<14} {info.url}')
  return '\n'.join(rows)


def main(argv):
  del argv
  if FLAGS.list:
    print(pretrained_table())
    return
  try:
    if not FLAGS.output:
      raise ValueError('Give --output, a new directory for the converted weights.')
    if FLAGS.pretrained:
      info, count = convert.copy_pretrained(FLAGS.pretrained, FLAGS.output)
    elif FLAGS.input:
      info, count = convert.convert_file(FLAGS.source, FLAGS.model, FLAGS.input, FLAGS.output,
                                         FLAGS.labels, FLAGS.image_size, FLAGS.crop_fraction,
                                         FLAGS.resize)
    else:
      raise ValueError('Give --pretrained=TAG or --input=FILE (with --source and --model).')
  except (ValueError, OSError) as e:
    raise SystemExit(f'error: {e}') from None
  options = ', '.join(f'{k}={v!r}' for k, v in info.options.items())
  print(f'Wrote {count:,} trainable parameters of {info.model} ({options}) to {FLAGS.output}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
