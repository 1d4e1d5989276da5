"""Source files → converted-weights directories that record their model (`checkpoint.save`)."""
from __future__ import annotations

import os
from typing import Optional

import jax

from xception_jax.models.inputs import Preprocessing
from xception_jax.weights import checkpoint, imagenet, published
from xception_jax.weights.keras_import import keras_to_ours
from xception_jax.weights.timm_import import timm_to_ours

SOURCES = ('keras', 'timm')


def default_class_names(model) -> Optional[list[str]]:
  """ImageNet's names for a 1,000 (or 1,001) class classifier, else None."""
  if model.include_top and model.num_classes in (1000, 1001):
    return imagenet.class_names(model.num_classes)
  return None


def parameter_count(variables) -> int:
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def convert_file(source: str, model_name: str, path: str | os.PathLike,
                 output: str | os.PathLike, labels: Optional[str | os.PathLike] = None,
                 image_size: Optional[int] = None, crop_fraction: float = 0.875,
                 resize: Optional[str] = None) -> tuple[checkpoint.WeightsInfo, int]:
  """Converts a Keras or timm file and writes `output`; returns what it records and the
  number of trainable parameters written.

  Keras sources may be fine-tuned models (`keras_to_ours`). The preprocessing
  recorded is `image_size` (default: the Keras model's fixed input size, else
  299), `crop_fraction` and `resize` (default: bilinear for Keras, bicubic for
  timm, as each evaluates); class names come from `labels` (one per line),
  else ImageNet's for 1,000-class weights.
  """
  if source not in SOURCES:
    raise ValueError(f'Unknown weights source {source!r}; choose one of {", ".join(SOURCES)}.')
  checkpoint.new_directory(output)   # Refused before the source is read (seconds for Keras).
  if source == 'keras':
    model, variables, fixed = keras_to_ours(model_name, path)
  else:
    (model, variables), fixed = timm_to_ours(model_name, path), None
  names = (checkpoint.read_class_names(labels, model.num_classes) if labels
           else default_class_names(model))
  preprocessing = Preprocessing(image_size or fixed or 299, crop_fraction,
                                resize or ('bilinear' if source == 'keras' else 'bicubic'))
  info = checkpoint.describe(model, preprocessing, names, source=f'{source} {os.fspath(path)}')
  checkpoint.save(output, variables, info)
  return info, parameter_count(variables)


def copy_pretrained(tag: str, output: str | os.PathLike) -> tuple[checkpoint.WeightsInfo, int]:
  """The converted weights of `tag` (downloaded and converted once, cached) copied to `output`."""
  checkpoint.new_directory(output)   # Refused before a download or conversion.
  directory = published.pretrained_directory(tag)
  info, variables = checkpoint.load_info(directory), checkpoint.load_variables(directory)
  checkpoint.save(output, variables, info)
  return info, parameter_count(variables)
