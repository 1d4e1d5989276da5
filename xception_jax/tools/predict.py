r"""Prints the top-5 classes, with names and probabilities, for image files.

Probabilities are softmax outputs, or per-class sigmoids for a model trained
on multi-label data. Each source brings its model, preprocessing and class
names:
  python -m xception_jax.predict --workdir=runs/flowers photo.jpg      # a training workdir
  python -m xception_jax.predict --weights=weights/xception photo.jpg  # converted weights
  python -m xception_jax.predict --pretrained=xception.keras_in1k photo.jpg
A workdir gives its averaged weights unless --raw. Converted weights of the
older layout (no weights.json) need --model (and --set, --image_size, --labels).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from xception_jax import models, weights
from xception_jax.data import preprocessing
from xception_jax.models.inputs import Preprocessing
from xception_jax.trainer.predictor import Predictor, from_weights, from_workdir

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'Training workdir to take everything from.')
  flags.DEFINE_bool('raw', False, 'Use the raw instead of the averaged (EMA) weights.')
  flags.DEFINE_string('weights', None, 'Converted-weights directory (convert command).')
  flags.DEFINE_string('pretrained', None, 'A pretrained tag (convert --list).')
  flags.DEFINE_string('model', None, 'Model name, for converted weights without weights.json.')
  flags.DEFINE_multi_string('set', [], "Model option key=value (overrides the weights').")
  flags.DEFINE_integer('image_size', None, "Input size (default: the weights').")
  flags.DEFINE_string('labels', None, 'Text file with one class name per line.')
  flags.DEFINE_integer('top', 5, 'Number of classes to print per image.')


def load_images(paths: Sequence[str], spec: Preprocessing) -> np.ndarray:
  """Evaluation preprocessing of each file → [N, size, size, 3]."""
  images = []
  for path in paths:
    if not Path(path).is_file():
      raise FileNotFoundError(f'No image file at {path}.')
    images.append(preprocessing.eval_image_file(path, spec))
  return np.stack(images)


def top_classes(predictor: Predictor, images: np.ndarray,
                top: int = 5) -> list[list[tuple[str, float]]]:
  """For each image, the `top` (name, probability) pairs, most likely first."""
  model = predictor.model
  logits = jax.jit(model.apply, compiler_options=models.compiler_options(model=model))(
      predictor.variables, jnp.asarray(images))
  probabilities = np.asarray(jax.nn.sigmoid(logits) if predictor.multilabel
                             else jax.nn.softmax(logits))
  order = np.argsort(-probabilities, axis=-1)[:, :top]
  return [[(predictor.class_names[i], float(p[i])) for i in row]
          for row, p in zip(order, probabilities)]


def predictor_from_flags() -> Predictor:
  sources = [f for f in (FLAGS.workdir, FLAGS.weights, FLAGS.pretrained) if f]
  if len(sources) != 1:
    raise ValueError('Give one of --workdir, --weights or --pretrained.')
  if FLAGS.workdir:
    predictor = from_workdir(FLAGS.workdir, FLAGS.raw)
  else:
    predictor = from_weights(FLAGS.weights or FLAGS.pretrained, FLAGS.model,
                             models.parse_options(FLAGS.set))
  if FLAGS.image_size:
    predictor.preprocessing = dataclasses.replace(predictor.preprocessing,
                                                  image_size=FLAGS.image_size)
  if FLAGS.labels:
    predictor.class_names = weights.read_class_names(FLAGS.labels, predictor.model.num_classes)
  return predictor


def main(argv):
  files = argv[1:]
  if not files:
    raise app.UsageError('Give one or more image files.')
  try:
    predictor = predictor_from_flags()
    results = top_classes(predictor, load_images(files, predictor.preprocessing), FLAGS.top)
  except (ValueError, OSError) as e:
    raise SystemExit(f'error: {e}') from None
  for path, classes in zip(files, results):
    print(path)
    for rank, (name, probability) in enumerate(classes, 1):
      print(f'  {rank}. {name:<30} {100 * probability:6.2f}%')


if __name__ == '__main__':
  define_flags()
  app.run(main)
