r"""Evaluates models and their ensemble under the papers' protocols.

  python -m xception_jax.evaluate MEMBER... --crops=center|10|12|144 \
      --dataset=imagenet2012 --split=validation --out=results.json

A MEMBER is a training workdir (its averaged weights; --raw for the raw ones),
a converted-weights directory or a pretrained tag; each brings its own input
size and preprocessing. With two or more members their ensemble is scored
too (probabilities averaged). Data sets: a TFDS name, 'folder:PATH', 'digits',
and by name 'imagenet2012', 'imagenet2012_real' (ReaL labels: right when in
the image's set; images with an empty set are not scored) and 'imagenet_v2'
(matched-frequency). Prints the top-1 and top-5 errors per member and for the
ensemble, as the Inception-v4 paper's tables do, and writes FILE.json:
{"members": {NAME: {"top1", "top5", "count"}}, "ensemble": {...}} (accuracies
as fractions). Crop schemes: xception_jax/data/crops.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import ml_collections
from absl import app, flags, logging

from xception_jax.data import crops, sources
from xception_jax.trainer import distributed, predictor, protocols

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_enum('crops', 'center', list(crops.SCHEMES), 'Crops per image.')
  flags.DEFINE_string('dataset', 'imagenet2012', "A TFDS name, 'folder:PATH' or 'digits'.")
  flags.DEFINE_string('split', None, "The split (default: the data set's evaluation split).")
  flags.DEFINE_string('out', None, 'JSON file for the results.')
  flags.DEFINE_bool('raw', False, "A workdir's raw weights instead of the averaged ones.")
  flags.DEFINE_integer('batch_size', 16, 'Images per step (global; a multiple of the devices).')
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir (and the digits cache).')
  flags.DEFINE_string('manual_dir', None, 'TFDS manual_dir (ImageNet archives).')
  flags.DEFINE_bool('distributed', False, 'Join the processes of a multi-host run '
                    '(jax.distributed.initialize).')


def main(argv):
  names = argv[1:]
  if not names:
    raise app.UsageError('Give one or more members: workdirs, converted-weights directories '
                         'or pretrained tags.')
  distributed.initialize(ml_collections.ConfigDict({'distributed': {
      'enabled': FLAGS.distributed}}))
  try:
    source = sources.get_source(FLAGS.dataset, data_dir=FLAGS.data_dir,
                                manual_dir=FLAGS.manual_dir)
    split = FLAGS.split or sources.evaluation_split(FLAGS.dataset)
    members = {name: predictor.load(path, FLAGS.raw)
               for name, path in zip(protocols.unique_names(names), names)}
    results = protocols.evaluate(members, source, split, FLAGS.crops, FLAGS.batch_size,
                                 progress=lambda line: logging.info('evaluate: %s', line))
  except (ValueError, OSError) as e:
    raise SystemExit(f'error: {e}') from None
  results = {'dataset': FLAGS.dataset, 'split': split, 'crops': FLAGS.crops, **results}
  print(protocols.error_table(results, FLAGS.crops))
  if 'unscored' in results:
    print(f'{results["unscored"]:.0f} images without a right answer were not scored.')
  if FLAGS.out:
    Path(FLAGS.out).write_text(json.dumps(results, indent=2) + '\n')


if __name__ == '__main__':
  define_flags()
  app.run(main)
