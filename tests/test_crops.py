"""The multi-crop protocols' geometry, on images whose pixels encode their coordinates
(red = x, green = y): every crop's position and scale, and its mirror."""
import numpy as np
import pytest
import tensorflow as tf

from xception_jax.data import crops
from xception_jax.models.inputs import Preprocessing


def coordinate_image(width: int, height: int) -> tf.Tensor:
  """A PNG whose pixel (y, x) is (x, y, 0)."""
  y, x = np.mgrid[:height, :width]
  image = np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8)
  return tf.io.encode_png(image)


def coordinates(crop: np.ndarray) -> np.ndarray:
  """[size, size, 2]: the (x, y) a [-1, 1] crop shows, in source pixels."""
  return ((crop + 1) / 2 * 255)[..., :2]


def resampled(positions: np.ndarray, source: int, target: int) -> np.ndarray:
  """Where bilinear resizing from `source` to `target` pixels samples: half-pixel centres,
  clamped to the image (the value a linear ramp takes there)."""
  return np.clip((positions + 0.5) * source / target - 0.5, 0, source - 1)


def expected_crop(width, height, resized_w, resized_h, left, top, size, whole_side=None):
  """(x, y) of a crop at (left, top) of the image resized to resized_w × resized_h; a
  `whole_side` square there resized to size instead when given."""
  steps = np.arange(size, dtype=np.float64)
  if whole_side is not None:
    steps = resampled(steps, whole_side, size)
  xs = resampled(left + steps, width, resized_w)
  ys = resampled(top + steps, height, resized_h)
  return np.stack(np.meshgrid(xs, ys), -1)


def check(got, want, what):
  np.testing.assert_allclose(got, want, atol=0.1, err_msg=what)


@pytest.mark.parametrize('scheme', ['10', '12'])
def test_ten_and_twelve_crops_of_the_central_square(scheme):
  # 96 × 64, size 32, crop fraction 0.5: S = 64, the shorter side, so no resize.
  spec = Preprocessing(image_size=32, crop_fraction=0.5)
  got = crops.eval_crops(coordinate_image(96, 64), spec, scheme).numpy()
  assert got.shape == (int(scheme), 32, 32, 3)
  corners = [(16, 0), (48, 0), (16, 32), (48, 32), (32, 16)]  # (left, top) in the image.
  half = int(scheme) // 2
  for k, (left, top) in enumerate(corners):
    check(coordinates(got[k]), expected_crop(96, 64, 96, 64, left, top, 32), f'crop {k}')
  if scheme == '12':  # The whole central square, 64 → 32.
    check(coordinates(got[5]), expected_crop(96, 64, 96, 64, 16, 0, 32, whole_side=64), 'whole')
  np.testing.assert_array_equal(got[half:], got[:half, :, ::-1])  # Exact mirror images.


@pytest.mark.parametrize('width, height', [(96, 64), (64, 96)])
def test_googlenet_144_crops_at_four_scales_and_three_squares(width, height):
  size = 56  # Shorter sides 64, 72, 80, 88: the 224-pixel protocol's 256 ... 352, scaled.
  got = crops.eval_crops(coordinate_image(width, height), Preprocessing(size), '144').numpy()
  assert got.shape == (144, size, size, 3)
  k = 0
  for scale in (256, 288, 320, 352):
    side = round(size * scale / 224)
    long_side = round(max(width, height) * side / min(width, height))
    resized_w, resized_h = (long_side, side) if width > height else (side, long_side)
    for offset in (0, (long_side - side) // 2, long_side - side):
      left, top = (offset, 0) if width > height else (0, offset)
      far, middle = side - size, (side - size) // 2
      for dx, dy in ((0, 0), (far, 0), (0, far), (far, far), (middle, middle)):
        check(coordinates(got[k]), expected_crop(width, height, resized_w, resized_h,
                                                 left + dx, top + dy, size), f'crop {k}')
        k += 1
      check(coordinates(got[k]), expected_crop(width, height, resized_w, resized_h, left, top,
                                               size, whole_side=side), f'whole square {k}')
      np.testing.assert_array_equal(got[k + 1:k + 7], got[k - 5:k + 1, :, ::-1])
      k += 7
  assert k == 144


def test_the_center_scheme_is_the_single_central_crop():
  from xception_jax.data import preprocessing
  image = coordinate_image(96, 64)
  spec = Preprocessing(image_size=40, crop_fraction=0.875)
  np.testing.assert_array_equal(crops.eval_crops(image, spec, 'center')[0],
                                preprocessing.preprocess_for_eval(image, 40, 0.875, spec))
  with pytest.raises(ValueError, match=r"Unknown crop scheme '5'; choose one of center, 10, 12, "
                                       r"144\."):
    crops.eval_crops(image, spec, '5')
