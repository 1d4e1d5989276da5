"""Where labelled images come from: TFDS datasets, image folders, bundled digits.

A source yields `(position, {'image': encoded bytes, 'label': label, 'file': name})`
for one process's part of a split, in a deterministic order given the shuffle
seed; `file` names the example in messages (its path, or its TFDS file name).
The label is an int64 class index, or a float32 multi-hot vector over the
classes for a multi-label source (`source.multilabel`) and for one whose
examples have sets of right answers (`source.label_sets`: ImageNet-ReaL).
"""
from __future__ import annotations

import abc
import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from xception_jax.data import bad_images

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


def multi_hot(indices: tf.Tensor, num_classes: int) -> tf.Tensor:
  """Class indices (repeats allowed, possibly none) → float32 [num_classes] vector of 0s and 1s."""
  indices = tf.reshape(tf.cast(indices, tf.int64), [-1, 1])
  counts = tf.scatter_nd(indices, tf.ones([tf.shape(indices)[0]], tf.float32), [num_classes])
  return tf.minimum(counts, 1.0)


class Source(abc.ABC):
  """A labelled image dataset split into named splits."""

  class_names: Sequence[str]
  multilabel: bool = False  # True: each example has a set of classes (a multi-hot label).
  # True: each example has a set of right answers (ImageNet-ReaL): a prediction is right
  # when it is in the set, and an example with an empty set is not scored.
  label_sets: bool = False

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
  """A TFDS image dataset with an 'image' feature and a label feature (`label_key`).

  The label feature is a ClassLabel (one class per image), a Sequence of
  ClassLabel (a set of classes: multi-label) or a 1-D tensor over the classes
  (a multi-hot vector: multi-label, classes named '0', '1', ...).
  """

  def __init__(self, name: str, data_dir: Optional[str] = None,
               manual_dir: Optional[str] = None, label_key: str = 'label',
               label_sets: bool = False):
    import tensorflow_datasets as tfds
    self._tfds = tfds
    try:
      self.builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise ValueError(f"Unknown dataset {name!r}: not a TFDS dataset name, 'digits', "
                       "'digits_multilabel', 'folder:PATH' or 'multilabel:PATH'.") from None
    features = self.builder.info.features
    if 'image' not in features or label_key not in features:
      raise ValueError(f'TFDS dataset {name!r} has no image/{label_key} features; it is not an '
                       f'image-classification dataset (label feature: --config.label_key; '
                       f'its features: {", ".join(features.keys())}).')
    self.label_key = label_key
    self._label_kind = self._read_label_feature(name, features[label_key])
    if label_sets:
      if self._label_kind != 'indices':
        raise ValueError(f'The {label_key!r} feature of {name!r} is not a set of classes.')
      self.multilabel, self.label_sets = False, True
    self._prepare(name, manual_dir)

  def _read_label_feature(self, name: str, label) -> str:
    """Sets class_names and multilabel from the label feature; returns its kind."""
    kinds = self._tfds.features
    if isinstance(label, kinds.ClassLabel):
      self.class_names = list(label.names)
      return 'index'
    self.multilabel = True
    if isinstance(label, kinds.Sequence) and isinstance(label.feature, kinds.ClassLabel):
      self.class_names = list(label.feature.names)
      return 'indices'
    if isinstance(label, kinds.Tensor) and len(label.shape) == 1 and label.shape[0]:
      self.class_names = [str(i) for i in range(label.shape[0])]
      return 'multi_hot'
    raise ValueError(f'The {self.label_key!r} feature of {name!r} ({label}) is neither a '
                     'ClassLabel, a Sequence of ClassLabel nor a 1-D multi-hot tensor.')

  def _label(self, label: tf.Tensor) -> tf.Tensor:
    if self._label_kind == 'index':
      return tf.cast(label, tf.int64)
    if self._label_kind == 'indices':
      return multi_hot(label, self.num_classes)
    return tf.cast(label, tf.float32)

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
    return ds.map(lambda ex: {'image': ex['image'], 'label': self._label(ex[self.label_key]),
                              'file': ex.get('file_name', tf.constant(''))})

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

  def __init__(self, root: str | os.PathLike, class_split: str = 'train',
               bad_images: str = 'error'):
    self.root = Path(root)
    self.bad_images = bad_images
    if not (self.root / class_split).is_dir():
      raise ValueError(f'Image folder {self.root} has no {class_split}/ sub-folder; expected '
                       f'{self.root}/{class_split}/<class name>/<image files>.')
    self.class_names = sorted(p.name for p in (self.root / class_split).iterdir() if p.is_dir())
    if not self.class_names:
      raise ValueError(f'{self.root / class_split} has no class sub-folders.')

  @functools.lru_cache(maxsize=None)
  def files(self, split: str) -> tuple[tuple[str, ...], tuple]:
    """`listed(split)` without files that cannot be images (bad_images.screen)."""
    return bad_images.screen(*self.listed(split), self.bad_images, f'{self.root}/{split}')

  def listed(self, split: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
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

  def _label_values(self, labels):
    """`files`' labels as what tf.data slices into one label per image."""
    return np.array(labels, np.int64)

  def _label(self, label: tf.Tensor) -> tf.Tensor:
    return label

  def read(self, split, part=Part(), shuffle_seed=None, shuffle_buffer=0, limit=None):
    paths, labels = self.files(split)
    ds = tf.data.Dataset.from_tensor_slices((list(paths), self._label_values(labels)))
    if shuffle_seed is not None:  # Paths are cheap: a full permutation of the split.
      ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=False)
    return _take_part(ds, part, limit).map(lambda position, ex: (position, {
        'image': tf.io.read_file(ex[0]), 'label': self._label(ex[1]), 'file': ex[0]}))


class MultiLabelFolderSource(FolderSource):
  """Images anywhere under `root`, labelled by one JSON-lines file per split.

  `root/<split>.jsonl` holds one line per image:
  `{"image": "<path relative to root>", "labels": ["<class name>", ...]}`
  (an empty list is allowed). Classes are the lines of `root/classes.txt` in
  order, or else the sorted class names that `<class_split>.jsonl` uses.
  """
  multilabel = True

  def __init__(self, root: str | os.PathLike, class_split: str = 'train',
               bad_images: str = 'error'):
    self.root = Path(root)
    self.bad_images = bad_images
    classes = self.root / 'classes.txt'
    if classes.is_file():
      self.class_names = [line.strip() for line in classes.read_text(encoding='utf-8')
                          .splitlines() if line.strip()]
    else:
      self.class_names = sorted({name for _, names in self._entries(class_split)
                                 for name in names})
    if not self.class_names:
      raise ValueError(f'{self.root} defines no classes (no classes.txt, no labels in '
                       f'{class_split}.jsonl).')
    self._index = {name: i for i, name in enumerate(self.class_names)}

  def _entries(self, split: str) -> list[tuple[str, list[str]]]:
    path = self.root / f'{split}.jsonl'
    if not path.is_file():
      raise ValueError(f'Multi-label folder {self.root} has no label file for split {split!r} '
                       f'({path} missing); expected lines {{"image": ..., "labels": [...]}}.')
    entries = []
    for number, line in enumerate(path.read_text(encoding='utf-8').splitlines(), 1):
      if line.strip():
        try:
          record = json.loads(line)
          entries.append((str(self.root / record['image']), list(record['labels'])))
        except (ValueError, KeyError, TypeError) as e:
          raise ValueError(f'{path}:{number}: expected {{"image": ..., "labels": [...]}} '
                           f'({e}).') from None
    if not entries:
      raise ValueError(f'{path} lists no images.')
    return entries

  def listed(self, split: str) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """All image paths of `split` and each image's class indices, in the file's order."""
    entries = self._entries(split)
    unknown = sorted({n for _, names in entries for n in names} - set(self._index))
    if unknown:
      raise ValueError(f'{self.root}/{split}.jsonl uses classes missing from the class list: '
                       f'{", ".join(map(repr, unknown[:10]))}.')
    return (tuple(path for path, _ in entries),
            tuple(tuple(self._index[n] for n in names) for _, names in entries))

  def _label_values(self, labels):
    lengths = [len(indices) for indices in labels]
    flat = np.array([i for indices in labels for i in indices], np.int64)
    return tf.RaggedTensor.from_row_lengths(flat, np.array(lengths, np.int64))

  def _label(self, label):
    return multi_hot(label, self.num_classes)


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


def write_digit_grids_folder(root: str | os.PathLike, image_size: int = 64,
                             train_images: int = 1440, test_images: int = 360) -> Path:
  """A multi-label image folder made from the bundled digits (offline, deterministic).

  Each image is a 2×2 grid of cells; every cell holds a digit with
  probability 1/2 (at least one per image), and the image's labels are the
  digit classes it shows (2.3 on average). Train images use the digits of
  `write_digits_folder`'s train split, test images its test digits. Cells are
  8×8, upscaled bilinearly to `image_size`. Writes PNG files, `train.jsonl`,
  `test.jsonl` and `classes.txt` (MultiLabelFolderSource's format); returns
  `root`; an existing complete folder is reused.
  """
  root = Path(root)
  done = root / '.complete'
  if done.exists():
    return root
  from sklearn.datasets import load_digits
  digits = load_digits()
  position_in_class = np.zeros(len(digits.target), int)
  for label in range(10):
    position_in_class[digits.target == label] = np.arange(np.sum(digits.target == label))
  is_test = position_in_class % 5 == 4  # The split rule of write_digits_folder.
  rng = np.random.default_rng(0)
  for split, count, pool in (('train', train_images, np.flatnonzero(~is_test)),
                             ('test', test_images, np.flatnonzero(is_test))):
    (root / split).mkdir(parents=True, exist_ok=True)
    lines = []
    for n in range(count):
      filled = rng.random(4) < 0.5
      filled[rng.integers(4)] = True
      chosen = rng.choice(pool, size=4)
      canvas = np.zeros((16, 16), np.float32)
      for cell in np.flatnonzero(filled):
        y, x = divmod(int(cell), 2)
        canvas[8 * y:8 * y + 8, 8 * x:8 * x + 8] = digits.images[chosen[cell]] / 16.0
      image = tf.image.resize(canvas[..., None], [image_size, image_size], method='bilinear')
      image = tf.cast(tf.round(tf.clip_by_value(image, 0, 1) * 255), tf.uint8)
      name = f'{split}/{n:04d}.png'
      (root / name).write_bytes(tf.io.encode_png(tf.image.grayscale_to_rgb(image)).numpy())
      labels = sorted({str(digits.target[chosen[c]]) for c in np.flatnonzero(filled)})
      lines.append(json.dumps({'image': name, 'labels': labels}))
    (root / f'{split}.jsonl').write_text('\n'.join(lines) + '\n', encoding='utf-8')
  (root / 'classes.txt').write_text(''.join(f'{i}\n' for i in range(10)), encoding='utf-8')
  done.touch()
  return root


# ImageNet's evaluation sets by name: (TFDS name, label feature, labels are sets of answers).
IMAGENET_SETS = {
    'imagenet2012': ('imagenet2012', 'label', False),
    'imagenet2012_real': ('imagenet2012_real', 'real_label', True),
    'imagenet_v2': ('imagenet_v2/matched-frequency', 'label', False),
}
# The split each data set is evaluated on by default.
EVALUATION_SPLITS = {'imagenet2012': 'validation', 'imagenet2012_real': 'validation',
                     'imagenet_v2': 'test', 'digits': 'test', 'digits_multilabel': 'test'}


def evaluation_split(dataset: str) -> str:
  """The split a data set is evaluated on unless one is named ('validation' if unknown)."""
  return EVALUATION_SPLITS.get(dataset.partition('/')[0], 'validation')


def get_source(dataset: str, *, data_dir: Optional[str] = None,
               manual_dir: Optional[str] = None, label_key: str = 'label',
               bad_images: str = 'error') -> Source:
  """'digits', 'digits_multilabel', 'folder:PATH', 'multilabel:PATH' or a TFDS name.

  TFDS datasets are labelled by their `label_key` feature, except ImageNet's
  evaluation sets by name (`IMAGENET_SETS`): 'imagenet2012', 'imagenet2012_real'
  (ReaL's sets of right answers) and 'imagenet_v2' (its matched-frequency
  config; 'imagenet_v2/threshold-0.7' etc. name the others). Folders are
  screened for files that cannot be images (`bad_images`).
  """
  if not dataset:
    raise ValueError("No dataset: set --config.dataset (a TFDS name, 'folder:PATH', "
                     "'multilabel:PATH', 'digits' or 'digits_multilabel').")
  cache = Path(data_dir or Path.home() / '.cache' / 'xception_jax')
  if dataset == 'digits':
    return FolderSource(write_digits_folder(cache / 'digits'))
  if dataset == 'digits_multilabel':
    return MultiLabelFolderSource(write_digit_grids_folder(cache / 'digits_multilabel'))
  if dataset.startswith('folder:'):
    return FolderSource(dataset[len('folder:'):], bad_images=bad_images)
  if dataset.startswith('multilabel:'):
    return MultiLabelFolderSource(dataset[len('multilabel:'):], bad_images=bad_images)
  if dataset in IMAGENET_SETS:
    name, label_key, label_sets = IMAGENET_SETS[dataset]
    return TfdsSource(name, data_dir=data_dir, manual_dir=manual_dir, label_key=label_key,
                      label_sets=label_sets)
  return TfdsSource(dataset, data_dir=data_dir, manual_dir=manual_dir, label_key=label_key)


def source_for(config) -> Source:
  """The data set a training config names: its dataset, data_dir, manual_dir, label_key and
  bad_images."""
  return get_source(config.dataset, data_dir=config.get('data_dir'),
                    manual_dir=config.get('manual_dir'), label_key=config.get('label_key', 'label'),
                    bad_images=config.get('bad_images', 'error'))
