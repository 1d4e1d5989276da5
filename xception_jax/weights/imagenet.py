"""The ImageNet-1k label set (ILSVRC 2012), shipped with the package.

`imagenet_classes.tsv` lists the 1,000 classes in the standard order (sorted
WordNet ids, the order of TFDS's `imagenet2012` labels and of every published
weight here) with a short readable name: the synset's first WordNet lemma,
two repeated lemmas made distinct ('crane (bird)', 'crane (machine)';
'maillot' and 'tank suit').
"""
from __future__ import annotations

import functools
from importlib import resources

BACKGROUND = 'background'  # Class 0 of 1,001-class (TF-slim) weights.


@functools.cache
def _table() -> tuple[tuple[str, str], ...]:
  text = resources.files('xception_jax.weights').joinpath('imagenet_classes.tsv').read_text()
  return tuple(tuple(line.split('\t')) for line in text.splitlines() if line)


def wordnet_ids() -> list[str]:
  """The 1,000 WordNet ids, in class order."""
  return [wnid for wnid, _ in _table()]


def class_names(num_classes: int = 1000) -> list[str]:
  """Readable names of ImageNet's classes: 1,000, or 1,001 with 'background' first."""
  names = [name for _, name in _table()]
  if num_classes == 1001:
    return [BACKGROUND] + names
  if num_classes != 1000:
    raise ValueError(f'ImageNet-1k has 1000 classes (1001 with background), not {num_classes}.')
  return names
