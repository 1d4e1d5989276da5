"""Small image folders whose pixels encode each image's identity."""
from pathlib import Path

import numpy as np
import tensorflow as tf


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
