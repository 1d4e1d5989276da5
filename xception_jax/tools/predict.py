r"""Prints the top-5 classes, with names and probabilities, for image files.

Probabilities are softmax outputs, or per-class sigmoids for a model trained
on multi-label data.

From a training workdir (its config, class names and latest checkpoint; the
averaged weights unless --raw):
  python -m xception_jax.predict --workdir=runs/quickstart digit1.png digit2.png
From converted weights:
  python -m xception_jax.predict --weights=weights/xception_keras --model=xception \
      --image_size=299 --labels=imagenet_names.txt photo.jpg
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from absl import app, flags

from xception_jax import models, weights
from xception_jax.trainer.checkpoints import Checkpoints
from xception_jax.data import preprocessing
from xception_jax.trainer.state import build_model

_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir to take everything from.')
_RAW = flags.DEFINE_bool('raw', False, 'Use the raw instead of the averaged (EMA) weights.')
_WEIGHTS = flags.DEFINE_string('weights', None, 'Converted-weights directory (convert command).')
_MODEL = flags.DEFINE_string('model', 'xception', 'Model name (with --weights).')
_SET = flags.DEFINE_multi_string('set', [], 'Model option key=value (with --weights).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 299, 'Input size (with --weights).')
_LABELS = flags.DEFINE_string('labels', None, 'Text file with one class name per line.')
_TOP = flags.DEFINE_integer('top', 5, 'Number of classes to print per image.')


def load_images(paths: Sequence[str], image_size: int, crop_fraction: float) -> np.ndarray:
  """Evaluation preprocessing of each file → [N, size, size, 3] in [-1, 1]."""
  images = []
  for path in paths:
    if not Path(path).is_file():
      raise FileNotFoundError(f'No image file at {path}.')
    try:
      images.append(preprocessing.preprocess_for_eval(tf.io.read_file(path), image_size,
                                                      crop_fraction).numpy())
    except tf.errors.InvalidArgumentError:
      raise ValueError(f'{path} is not a decodable image (JPEG, PNG, BMP or GIF).') from None
  return np.stack(images)


def top_classes(model, variables: dict[str, Any], images: np.ndarray, class_names: Sequence[str],
                top: int = 5, multilabel: bool = False) -> list[list[tuple[str, float]]]:
  """For each image, the `top` (name, probability) pairs, most likely first."""
  logits = jax.jit(model.apply, compiler_options=models.compiler_options(model=model))(
      variables, jnp.asarray(images))
  probabilities = jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits)
  order = np.argsort(-np.asarray(probabilities), axis=-1)[:, :top]
  return [[(class_names[i], float(p[i])) for i in row]
          for row, p in zip(order, np.asarray(probabilities))]


def from_workdir(workdir: str,
                 raw: bool) -> tuple[Any, dict[str, Any], list[str], int, float, bool]:
  """Model, variables, class names, image size, crop fraction, multi-label? of a workdir."""
  path = Path(workdir)
  if not (path / 'config.json').is_file():
    raise FileNotFoundError(f'{path} has no config.json: not a training workdir.')
  config = json.loads((path / 'config.json').read_text())
  class_names = json.loads((path / 'class_names.json').read_text())
  checkpoints = Checkpoints(path / 'checkpoints', async_save=False)
  if not checkpoints.steps():
    raise FileNotFoundError(f'{path / "checkpoints"} holds no checkpoint yet.')
  saved = checkpoints.restore_arrays(checkpoints.steps()[-1])
  prefix = '' if raw else 'ema_'
  variables = {'params': saved[f'{prefix}params'], 'batch_stats': saved[f'{prefix}batch_stats']}
  model = build_model(ml_collections.ConfigDict(config), len(class_names))
  task = path / 'task.json'
  multilabel = task.is_file() and json.loads(task.read_text())['multilabel']
  return (model, variables, class_names, config['image_size'], config['eval_crop_fraction'],
          multilabel)


def read_labels(path: Optional[str], num_classes: int) -> list[str]:
  if path is None:
    return [f'class {i}' for i in range(num_classes)]
  names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
  if len(names) != num_classes:
    raise ValueError(f'{path} names {len(names)} classes; the model has {num_classes}.')
  return names


def main(argv):
  files = argv[1:]
  if not files:
    raise app.UsageError('Give one or more image files.')
  try:
    if _WORKDIR.value:
      model, variables, names, size, crop, multilabel = from_workdir(_WORKDIR.value, _RAW.value)
    elif _WEIGHTS.value:
      variables = weights.load_variables(_WEIGHTS.value)
      num_classes = variables['params']['head']['predictions']['bias'].shape[0]
      model = models.create_model(_MODEL.value, num_classes=num_classes,
                                  **models.parse_options(_SET.value))
      names, size, crop = read_labels(_LABELS.value, num_classes), _IMAGE_SIZE.value, 0.875
      multilabel = False
    else:
      raise ValueError('Give --workdir or --weights.')
    results = top_classes(model, variables, load_images(files, size, crop), names, _TOP.value,
                          multilabel)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f'error: {e}') from None
  for path, classes in zip(files, results):
    print(path)
    for rank, (name, probability) in enumerate(classes, 1):
      print(f'  {rank}. {name:<30} {100 * probability:6.2f}%')


if __name__ == '__main__':
  app.run(main)
