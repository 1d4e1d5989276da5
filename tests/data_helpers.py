"""Small image folders and a tiny TFDS data set whose pixels encode each image's identity."""
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


def make_image_folder(root, classes=4, per_class=10, size=(24, 30), splits=('train', 'test'),
                      fmt='png') -> Path:
  """root/<split>/<class>/<id>.<fmt>: solid images whose red value is the id (0-based, global).

  Ids run over all splits, so every image in the folder is distinguishable.
  """
  root, image_id = Path(root), 0
  for split in splits:
    for label in range(classes):
      directory = root / split / f'class_{label}'
      directory.mkdir(parents=True, exist_ok=True)
      for _ in range(per_class):
        image = np.zeros((*size, 3), np.uint8)
        image[..., 0] = image_id
        image[..., 1] = 10 * label
        encode = tf.io.encode_png if fmt == 'png' else tf.io.encode_jpeg
        (directory / f'{image_id:03d}.{fmt}').write_bytes(encode(image).numpy())
        image_id += 1
  return root


def image_ids(images: np.ndarray) -> np.ndarray:
  """Recovers the ids of solid images preprocessed to [-1, 1] (red channel)."""
  return np.round((images[:, 0, 0, 0] / 2 + 0.5) * 255).astype(int)


class MultiLabelShapes(tfds.core.GeneratorBasedBuilder):
  """A tiny multi-label TFDS data set: image i is solid red i; class c ⇔ bit c of i.

  Two label features: 'labels' (a Sequence of ClassLabel) and 'multi_hot' (a
  bool vector). Splits: train (ids 0–15), test (ids 16–28).
  """
  VERSION = tfds.core.Version('1.0.0')
  CLASSES = ('a', 'b', 'c', 'd')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'labels': tfds.features.Sequence(tfds.features.ClassLabel(names=self.CLASSES)),
        'multi_hot': tfds.features.Tensor(shape=(len(self.CLASSES),), dtype=np.bool_),
    }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(0, 16), 'test': self._generate_examples(16, 13)}

  def _generate_examples(self, start, count):
    for i in range(start, start + count):
      image = np.zeros((24, 30, 3), np.uint8)
      image[..., 0] = i
      bits = [(i >> c) & 1 for c in range(len(self.CLASSES))]
      yield i, {'image': image, 'labels': [c for c, bit in enumerate(bits) if bit],
                'multi_hot': np.array(bits, np.bool_)}


def multilabel_bits(ids, classes=4) -> np.ndarray:
  """MultiLabelShapes' multi-hot labels of images `ids`."""
  return np.array([[(i >> c) & 1 for c in range(classes)] for i in ids], np.float32)
