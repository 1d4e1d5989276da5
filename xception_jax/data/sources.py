"""Where labelled images come from: TFDS datasets, image folders, bundled digits.

A source yields `(position, {'image': encoded bytes, 'label': int64})` for one
process's part of a split, in a deterministic order given the shuffle seed.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')

IMAGENET_PREPARATION = (
    'ImageNet needs a one-time manual download: get ILSVRC2012_img_train.tar and '
    'ILSVRC2012_img_val.tar from https://image-net.org (login required), put both in one '
    'directory, and set --config.manual_dir to it (TFDS then prepares imagenet2012 under '
    '--config.data_dir, about 150 GB, once).')


def _has_imagenet_archives(manual_dir: Optional[str]) -> bool:
  return bool(manual_dir) and all(
      os.path.isfile(os.path.join(manual_dir, f))
      for f in ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar'))


@dataclasses.dataclass(frozen=True)
class Part:
  """The positions of a split's (shuffled) order that one process reads.

  Positions are cut into blocks of `block` consecutive examples, dealt to the
  `count` processes in turn. With `block` = the per-process batch, global batch
  k is process 0's k-th batch, then process 1's, ...: the same examples in the
  same order whatever the number of processes.
  """
  index: int = 0
  count: int = 1
  block: int = 1

  def owns(self, position: tf.Tensor) -> tf.Tensor:
    return (position // self.block) % self.count == self.index


def _take_part(ds: tf.data.Dataset, part: Part, limit: Optional[int]) -> tf.data.Dataset:
  """(position, element) pairs of `part` among the first `limit` elements of `ds`."""
  ds = ds.enumerate()
  if limit is not None:
    ds = ds.take(limit)
  return ds.filter(lambda position, _: part.owns(position))


class Source(abc.ABC):
  """A labelled image dataset split into named splits."""

  class_names: Sequence[str]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @abc.abstractmethod
  def split_size(self, split: str) -> int:
    """Number of examples in `split` (all processes together)."""

  @abc.abstractmethod
  def read(self, split: str, part: Part = Part(), shuffle_seed: Optional[int] = None,
           shuffle_buffer: int = 0, limit: Optional[int] = None) -> tf.data.Dataset:
    """This process's (position, example) pairs of `split`, among the first `limit`.

    With `shuffle_seed` the order is shuffled deterministically from the seed.
    """


class TfdsSource(Source):
  """Any TFDS image-classification dataset with 'image' and 'label' features."""

  def __init__(self, name: str, data_dir: Optional[str] = None,
               manual_dir: Optional[str] = None):
    import tensorflow_datasets as tfds
    self._tfds = tfds
    try:
      self.builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise ValueError(f"Unknown dataset {name!r}: not a TFDS dataset name, 'digits' or "
                       "'folder:PATH'.") from None
    features = self.builder.info.features
    if 'image' not in features or 'label' not in features:
      raise ValueError(f'TFDS dataset {name!r} has no image/label features; it is not an '
                       'image-classification dataset.')
    self.class_names = list(features['label'].names)
    self._prepare(name, manual_dir)

  def _prepare(self, name: str, manual_dir: Optional[str]) -> None:
    """Generates the dataset once (a no-op when prepared, or under tfds.testing.mock_data)."""
    if self.builder.info.splits:
      return
    config = self._tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
      self.builder.download_and_prepare(download_config=config)
    except Exception as e:
      if name.startswith('imagenet2012') and not _has_imagenet_archives(manual_dir):
        raise ValueError(f'{name} is not prepared and manual_dir={manual_dir!r} does not hold '
                         f'its archives. {IMAGENET_PREPARATION}') from None
      if 'manual' in str(e).lower():
        raise ValueError(f'{name} needs a manual download into manual_dir={manual_dir!r}: '
                         f'{e}') from None
      raise

  def split_size(self, split: str) -> int:
    if self.builder.info.splits:
      return self.builder.info.splits[split].num_examples
    return int(self._dataset(split).reduce(np.int64(0), lambda n, _: n + 1))


  def _dataset(self, split, shuffle_seed=None) -> tf.data.Dataset:
    read_config = self._tfds.ReadConfig(shuffle_seed=shuffle_seed)
    ds = self.builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                                 read_config=read_config,
                                 decoders={'image': self._tfds.decode.SkipDecoding()})
    return ds.map(lambda ex: {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int64)})

  def read(self, split, part=Part(), shuffle_seed=None, shuffle_buffer=0, limit=None):
    if not self.builder.info.splits:  # Mocked or metadata-less: every process reads it all.
      ds = self._dataset(split, shuffle_seed)
      if shuffle_seed is not None and shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
      return _take_part(ds, part, limit)
    # Each process reads only its own sub-split's files; its k-th example is given the
    # position k·count + index, so positions stay unique across processes.
    ds = self._dataset(self._tfds.even_splits(split, n=part.count)[part.index], shuffle_seed)
    if shuffle_seed is not None and shuffle_buffer:
      ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    if limit is not None:
      ds = ds.take(limit // part.count)
    return ds.enumerate().map(lambda k, example: (k * part.count + part.index, example))


class FolderSource(Source):
  """`root/<split>/<class name>/<image file>`; classes are the sorted sub-folders of a split."""

  def __init__(self, root: str | os.PathLike, class_split: str = 'train'):
    self.root = Path(root)
    if not (self.root / class_split).is_dir():
      raise ValueError(f'Image folder {self.root} has no {class_split}/ sub-folder; expected '
                       f'{self.root}/{class_split}/<class name>/<image files>.')
    self.class_names = sorted(p.name for p in (self.root / class_split).iterdir() if p.is_dir())
    if not self.class_names:
      raise ValueError(f'{self.root / class_split} has no class sub-folders.')

  @functools.lru_cache(maxsize=None)
  def files(self, split: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """All image paths of `split` and their labels, sorted by class then file name."""
    directory = self.root / split
    if not directory.is_dir():
      raise ValueError(f'Image folder {self.root} has no split {split!r} ({directory} missing).')
    paths, labels = [], []
    for label, name in enumerate(self.class_names):
      for path in sorted((directory / name).glob('*')) if (directory / name).is_dir() else []:
        if path.suffix.lower() in IMAGE_SUFFIXES:
          paths.append(str(path))
          labels.append(label)
    if not paths:
      raise ValueError(f'{directory} holds no images ({", ".join(IMAGE_SUFFIXES)}).')
    return tuple(paths), tuple(labels)

  def split_size(self, split):
    return len(self.files(split)[0])

  def read(self, split, part=Part(), shuffle_seed=None, shuffle_buffer=0, limit=None):
    paths, labels = self.files(split)
    ds = tf.data.Dataset.from_tensor_slices((list(paths), np.array(labels, np.int64)))
    if shuffle_seed is not None:  # Paths are cheap: a full permutation of the split.
      ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=False)
    return _take_part(ds, part, limit).map(
        lambda position, ex: (position, {'image': tf.io.read_file(ex[0]), 'label': ex[1]}))


def write_digits_folder(root: str | os.PathLike, image_size: int = 64) -> Path:
  """Writes scikit-learn's bundled 8×8 digits as PNG files in a train/test image folder.

  1,797 images of 10 classes; every fifth image of each class goes to `test`
  (355 images), the rest to `train` (1,442). Upscaled bilinearly to
  `image_size`, white on black, RGB. Returns `root`; an existing complete
  folder is reused.
  """
  root = Path(root)
  done = root / '.complete'
  if done.exists():
    return root
  from sklearn.datasets import load_digits
  digits = load_digits()
  images = tf.image.resize(digits.images[..., None] / 16.0, [image_size, image_size],
                           method='bilinear')
  images = tf.cast(tf.round(tf.clip_by_value(images, 0, 1) * 255), tf.uint8)
  images = tf.image.grayscale_to_rgb(images).numpy()
  seen = np.zeros(10, int)
  for image, label in zip(images, digits.target):
    split = 'test' if seen[label] % 5 == 4 else 'train'
    path = root / split / str(label) / f'{seen[label]:04d}.png'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(image).numpy())
    seen[label] += 1
  done.touch()
  return root


def get_source(dataset: str, *, data_dir: Optional[str] = None,
               manual_dir: Optional[str] = None) -> Source:
  """'digits', 'folder:PATH' or a TFDS name such as 'imagenet2012'."""
  if dataset == 'digits':
    cache = Path(data_dir or Path.home() / '.cache' / 'xception_jax') / 'digits'
    return FolderSource(write_digits_folder(cache))
  if dataset.startswith('folder:'):
    return FolderSource(dataset[len('folder:'):])
  return TfdsSource(dataset, data_dir=data_dir, manual_dir=manual_dir)
