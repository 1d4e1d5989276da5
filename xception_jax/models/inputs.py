"""What a set of weights expects as input: the evaluation preprocessing, as data."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

RESIZE_METHODS = ('bilinear', 'bicubic')
MINUS_ONE_TO_ONE = (0.5, 0.5, 0.5)  # mean = std = 0.5 maps [0, 1] pixels to [-1, 1].


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How an image becomes a model input at evaluation time.

  The central square of side `crop_fraction` × the image's side (per axis,
  as `tf.image.central_crop`) is resized to `image_size` × `image_size` with
  `resize`, and each channel c of pixels p in [0, 1] becomes
  (p − mean[c]) / std[c]. The defaults are the Inception recipe every model
  here was trained with: 299 px, 0.875, bilinear, inputs in [−1, 1].
  """
  image_size: int = 299
  crop_fraction: float = 0.875
  resize: str = 'bilinear'
  mean: tuple[float, float, float] = MINUS_ONE_TO_ONE
  std: tuple[float, float, float] = MINUS_ONE_TO_ONE

  def __post_init__(self):
    if self.resize not in RESIZE_METHODS:
      raise ValueError(f'resize must be one of {RESIZE_METHODS}, got {self.resize!r}.')
    if not 0 < self.crop_fraction <= 1:
      raise ValueError(f'crop_fraction must be in (0, 1], got {self.crop_fraction}.')
    object.__setattr__(self, 'mean', tuple(float(m) for m in self.mean))
    object.__setattr__(self, 'std', tuple(float(s) for s in self.std))

  @property
  def minus_one_to_one(self) -> bool:
    """Inputs scaled to [−1, 1], as every training config here feeds them."""
    return self.mean == MINUS_ONE_TO_ONE and self.std == MINUS_ONE_TO_ONE

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, record: Mapping[str, Any]) -> 'Preprocessing':
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in known})
