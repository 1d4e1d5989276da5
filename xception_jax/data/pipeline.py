"""tf.data input pipelines: a resumable training stream and an exact evaluation pass.

The training stream is a pure function of (seed, step): epoch e reads the
process's part of the split in an order fixed by (seed, e), and the example
at position i of that epoch is augmented with the stateless seed (seed, e, i).
Resuming at step s therefore continues exactly where step s left off.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

from xception_jax.data import preprocessing
from xception_jax.data.sources import Part, Source

AUTOTUNE = tf.data.AUTOTUNE


def batch_label(source: Source, label: tf.Tensor) -> tf.Tensor:
  """A source's label as batched: an int32 class, or a float32 multi-hot vector (multi-label)."""
  return tf.cast(label, tf.float32 if source.multilabel else tf.int32)


def padding_label(source: Source) -> tf.Tensor:
  """The label of the padding examples that fill an evaluation's last batch."""
  if source.multilabel:
    return tf.zeros([source.num_classes], tf.float32)
  return tf.constant(0, tf.int32)


def derived_seed(*numbers: int) -> int:
  """A 31-bit seed determined by `numbers` (e.g. run seed, epoch)."""
  return int(np.random.SeedSequence(list(numbers)).generate_state(1)[0] >> 1)


@dataclasses.dataclass(frozen=True)
class TrainStream:
  """Where one process's training batches come from and how they are made."""
  source: Source
  split: str
  local_batch_size: int
  image_size: int
  seed: int
  steps_per_epoch: int
  process_index: int = 0
  process_count: int = 1
  shuffle_buffer: int = 16_384
  augmentation: preprocessing.Augmentation = preprocessing.Augmentation()

  def epoch(self, epoch: int, skip_batches: int = 0) -> tf.data.Dataset:
    """Batches of `epoch` from batch `skip_batches` on: {'image', 'label'} (see `batch_label`)."""
    epoch_seed = derived_seed(self.seed, epoch)
    part = Part(self.process_index, self.process_count, block=self.local_batch_size)
    global_batch = self.local_batch_size * self.process_count
    ds = self.source.read(self.split, part, shuffle_seed=epoch_seed,
                          shuffle_buffer=self.shuffle_buffer,
                          limit=self.steps_per_epoch * global_batch)
    ds = ds.skip(skip_batches * self.local_batch_size)

    def prepare(position, example):
      seed = tf.stack([tf.constant(epoch_seed, tf.int64), position])
      image = preprocessing.preprocess_for_train(example['image'], self.image_size, seed,
                                                 self.augmentation)
      return {'image': image, 'label': batch_label(self.source, example['label'])}

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(self.local_batch_size, drop_remainder=True).prefetch(AUTOTUNE)

  def batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches for steps start_step, start_step + 1, ... without end."""
    epoch, skip = divmod(start_step, self.steps_per_epoch)
    while True:
      yield from self.epoch(epoch, skip).as_numpy_iterator()
      epoch, skip = epoch + 1, 0


def eval_batches(source: Source, split: str, local_batch_size: int, image_size: int,
                 crop_fraction: float = 0.875, process_index: int = 0,
                 process_count: int = 1,
                 num_examples: Optional[int] = None) -> tuple[tf.data.Dataset, int]:
  """Every example of `split` once, in padded batches with a 0/1 `mask`.

  Returns the dataset and its number of batches, the same on every process
  (processes with fewer examples get fully masked batches), so collective
  evaluation steps stay in lockstep.
  """
  total = source.split_size(split) if num_examples is None else num_examples
  per_process = math.ceil(total / process_count)
  num_batches = math.ceil(per_process / local_batch_size)

  def prepare(example):
    image = preprocessing.preprocess_for_eval(example['image'], image_size, crop_fraction)
    return {'image': image, 'label': batch_label(source, example['label']),
            'mask': tf.constant(1.0)}

  padding = {'image': tf.zeros([image_size, image_size, 3]), 'label': padding_label(source),
             'mask': tf.constant(0.0)}
  ds = source.read(split, Part(process_index, process_count)).map(
      lambda _, example: prepare(example), num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
  ds = ds.take(num_batches * local_batch_size).batch(local_batch_size).prefetch(AUTOTUNE)
  return ds, num_batches
