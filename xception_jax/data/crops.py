"""The evaluation crops of the papers' protocols, all of an image's crops as one tensor.

Every crop is a model-size square (`spec.image_size`, S below is a side in
pixels), resized with the weights' method and normalised as they expect.
The papers name their multi-crop protocols without defining 10 and 12 crops;
this is the geometry used here:

  center  1 crop: the central `crop_fraction` of each side, resized (today's
          evaluation; the Xception paper's single crop).
  10      the shorter side resized to S = round(size / crop_fraction), the
          aspect ratio kept; of the central S×S square, the four corner crops
          and the central crop of size×size; then their mirror images.
  12      the 10, and the whole S×S square resized to size×size and its mirror.
  144     GoogLeNet's (Szegedy et al. 2014, §10), scaled to the model's input:
          the shorter side resized to round(size × s / 224) for s = 256, 288,
          320, 352; the left, centre and right squares of that side (top,
          centre, bottom for a portrait image); the 12 crops of each square
          as above: 4 scales × 3 squares × 12 = 144.

Order: scale, then square, then [top-left, top-right, bottom-left,
bottom-right, centre, whole square] followed by their mirrors in that order.
"""
from __future__ import annotations

import tensorflow as tf

from xception_jax.data import preprocessing
from xception_jax.models.inputs import Preprocessing

SCHEMES = {'center': 1, '10': 10, '12': 12, '144': 144}
GOOGLENET_SCALES = (256, 288, 320, 352)  # Shorter sides for a 224-pixel input.


def _decode(image_bytes: tf.Tensor) -> tf.Tensor:
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return tf.image.convert_image_dtype(image, tf.float32)


def _resize(image: tf.Tensor, height, width, method: str) -> tf.Tensor:
  image = tf.image.resize(image, tf.stack([height, width]), method=method)
  return image if method == 'bilinear' else tf.clip_by_value(image, 0.0, 1.0)


def _with_shorter_side(image: tf.Tensor, side: int, method: str) -> tf.Tensor:
  """`image` resized so that its shorter side is `side` pixels, its aspect ratio kept."""
  shape = tf.cast(tf.shape(image)[:2], tf.float64)
  scale = side / tf.reduce_min(shape)
  height, width = tf.unstack(tf.cast(tf.round(shape * scale), tf.int32))
  height, width = tf.maximum(height, side), tf.maximum(width, side)
  return _resize(image, height, width, method)


def _square_crops(square: tf.Tensor, side: int, size: int, whole: bool,
                  method: str) -> tf.Tensor:
  """Corner and centre crops of a side×side square (and the whole square resized), each
  followed in the second half by its mirror image: [5 or 6 × 2, size, size, 3]."""
  far, middle = side - size, (side - size) // 2
  crops = [tf.slice(square, [y, x, 0], [size, size, 3])
           for y, x in ((0, 0), (0, far), (far, 0), (far, far), (middle, middle))]
  if whole:
    crops.append(_resize(square, size, size, method))
  crops = tf.stack(crops)
  return tf.concat([crops, tf.image.flip_left_right(crops)], axis=0)


def _central_square(image: tf.Tensor, side: int) -> tf.Tensor:
  shape = tf.shape(image)
  return tf.slice(image, [(shape[0] - side) // 2, (shape[1] - side) // 2, 0], [side, side, 3])


def _three_squares(image: tf.Tensor, side: int) -> list[tf.Tensor]:
  """The left, centre and right squares of a landscape image (top, centre, bottom of a
  portrait one), of side its shorter side."""
  shape = tf.shape(image)
  landscape = shape[1] >= shape[0]
  extra = tf.abs(shape[1] - shape[0])
  squares = []
  for offset in (0, extra // 2, extra):
    y, x = tf.where(landscape, 0, offset), tf.where(landscape, offset, 0)
    squares.append(tf.slice(image, [y, x, 0], [side, side, 3]))
  return squares


def eval_crops(image_bytes: tf.Tensor, spec: Preprocessing, scheme: str = 'center') -> tf.Tensor:
  """An encoded image → its evaluation crops under `scheme`: [n, size, size, 3] model inputs."""
  if scheme not in SCHEMES:
    raise ValueError(f'Unknown crop scheme {scheme!r}; choose one of {", ".join(SCHEMES)}.')
  size = spec.image_size
  if scheme == 'center':
    crops = preprocessing.preprocess_for_eval(image_bytes, size, spec.crop_fraction, spec)[None]
  else:
    image = _decode(image_bytes)
    if scheme in ('10', '12'):
      side = round(size / spec.crop_fraction)
      square = _central_square(_with_shorter_side(image, side, spec.resize), side)
      crops = _square_crops(square, side, size, scheme == '12', spec.resize)
    else:
      crops = []
      for scale in GOOGLENET_SCALES:
        side = round(size * scale / 224)
        resized = _with_shorter_side(image, side, spec.resize)
        crops += [_square_crops(square, side, size, True, spec.resize)
                  for square in _three_squares(resized, side)]
      crops = tf.concat(crops, axis=0)
    crops = preprocessing.normalize(crops, spec)
  crops.set_shape([SCHEMES[scheme], size, size, 3])
  return crops
