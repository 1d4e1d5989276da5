"""Inception preprocessing (slim `inception_preprocessing.py` recipe) on encoded images.

Training: a random crop chosen by a distorted bounding box, decoded directly
from the JPEG (`decode_and_crop_jpeg` decodes only the window), resized,
randomly flipped, colour-distorted, scaled to [-1, 1]. Evaluation: central
crop keeping 0.875 of each side, resized, scaled to [-1, 1].

All randomness is stateless and comes from a per-example seed, so an example's
augmentation depends only on (run seed, position in the stream): a resumed run
sees exactly the images an uninterrupted run would have seen.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from xception_jax.models.inputs import Preprocessing


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Training-time distortions; the defaults are the Inception recipe."""
  min_object_covered: float = 0.1
  aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)
  area_range: tuple[float, float] = (0.05, 1.0)
  max_attempts: int = 100
  flip: bool = True
  color_distortion: Optional[str] = 'fast'  # 'fast', 'slow' or None.


def _decode_window(image_bytes: tf.Tensor,
                   window_fn: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
  """Decodes the crop window `window_fn(shape) = [y, x, h, w]` as uint8 RGB.

  JPEGs decode only the window; other formats (PNG, BMP, GIF) decode whole first.
  """
  def jpeg():
    window = window_fn(tf.io.extract_jpeg_shape(image_bytes))
    return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

  def other():
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    window = window_fn(tf.shape(image))
    return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])

  image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  image.set_shape([None, None, 3])
  return image


def _resize_and_scale(image: tf.Tensor, image_size: int, method: str = 'bilinear') -> tf.Tensor:
  """uint8 crop → float32 [image_size, image_size, 3] in [0, 1] (bilinear, as slim)."""
  image = tf.image.convert_image_dtype(image, tf.float32)
  image = tf.image.resize(image, [image_size, image_size], method=method)
  return image if method == 'bilinear' else tf.clip_by_value(image, 0.0, 1.0)


def _to_minus_one_one(image: tf.Tensor) -> tf.Tensor:
  return (image - 0.5) * 2.0


def normalize(image: tf.Tensor, spec: Preprocessing) -> tf.Tensor:
  """[0, 1] pixels → model inputs, (p − mean) / std per channel ([−1, 1] by default)."""
  if spec.minus_one_to_one:
    return _to_minus_one_one(image)
  return (image - tf.constant(spec.mean)) / tf.constant(spec.std)


def _distort_color(image: tf.Tensor, seed: tf.Tensor, mode: str) -> tf.Tensor:
  """Brightness ±32/255 and saturation 0.5–1.5 in a random order ('slow' adds hue, contrast)."""
  seeds = tf.random.experimental.stateless_split(seed, 5)
  brightness = lambda x: tf.image.stateless_random_brightness(x, 32. / 255., seeds[0])
  saturation = lambda x: tf.image.stateless_random_saturation(x, 0.5, 1.5, seeds[1])
  ops = [brightness, saturation]
  if mode == 'slow':
    ops += [lambda x: tf.image.stateless_random_hue(x, 0.2, seeds[2]),
            lambda x: tf.image.stateless_random_contrast(x, 0.5, 1.5, seeds[3])]
  elif mode != 'fast':
    raise ValueError(f"color_distortion must be 'fast', 'slow' or None, got {mode!r}.")
  first_brightness = tf.random.stateless_uniform([], seeds[4]) < 0.5
  ordered = lambda order: lambda: _apply_all(image, [ops[i] for i in order])
  n = len(ops)
  forward, backward = list(range(n)), list(reversed(range(n)))
  image = tf.cond(first_brightness, ordered(forward), ordered(backward))
  return tf.clip_by_value(image, 0.0, 1.0)


def _apply_all(image, ops):
  for op in ops:
    image = op(image)
  return image


def preprocess_for_train(image_bytes: tf.Tensor, image_size: int, seed: tf.Tensor,
                         augmentation: Augmentation = Augmentation()) -> tf.Tensor:
  """Encoded image → augmented float32 [image_size, image_size, 3] in [-1, 1].

  `seed` is a shape-[2] int tensor; equal seeds give equal outputs.
  """
  crop_seed, flip_seed, color_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  a = augmentation

  def crop_window(shape):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=crop_seed,
        min_object_covered=a.min_object_covered, aspect_ratio_range=a.aspect_ratio_range,
        area_range=a.area_range, max_attempts=a.max_attempts,
        use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])

  image = _resize_and_scale(_decode_window(image_bytes, crop_window), image_size)
  if a.flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  if a.color_distortion is not None:
    image = _distort_color(image, color_seed, a.color_distortion)
  return _to_minus_one_one(image)


def preprocess_for_eval(image_bytes: tf.Tensor, image_size: int,
                        crop_fraction: float = 0.875,
                        spec: Optional[Preprocessing] = None) -> tf.Tensor:
  """Encoded image → central crop (fraction of each side), resized, in [-1, 1].

  `spec`, when given, sets the resize method and the normalisation too (its
  image size and crop fraction are the arguments').
  """
  spec = spec or Preprocessing(image_size, crop_fraction)
  def central_window(shape):
    # Integer arithmetic of tf.image.central_crop, applied before decoding.
    height, width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    top = tf.cast((height - height * crop_fraction) / 2, tf.int32)
    left = tf.cast((width - width * crop_fraction) / 2, tf.int32)
    return tf.stack([top, left, shape[0] - 2 * top, shape[1] - 2 * left])

  image = _decode_window(image_bytes, central_window)
  return normalize(_resize_and_scale(image, image_size, spec.resize), spec)


def eval_image_file(path: str, spec: Preprocessing) -> np.ndarray:
  """The image file at `path` under `spec`'s evaluation preprocessing, [size, size, 3];
  a ValueError naming the file when it is not a decodable image."""
  try:
    return preprocess_for_eval(tf.io.read_file(path), spec.image_size, spec.crop_fraction,
                               spec).numpy()
  except tf.errors.InvalidArgumentError:
    raise ValueError(f'{path} is not a decodable image (JPEG, PNG, BMP or GIF).') from None
