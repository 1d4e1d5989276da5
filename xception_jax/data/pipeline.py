"""tf.data input pipelines: a resumable training stream and an exact evaluation pass.

The training stream is a pure function of (seed, step): epoch e reads the
process's part of the split in an order fixed by (seed, e), and the example
at position i of that epoch is augmented with the stateless seed (seed, e, i).
Resuming at step s therefore continues exactly where step s left off.

An image that does not decode stops the stream with an error naming its file
(`bad_images='error'`), or is skipped (`'skip'`): its batch is still made of
the same positions, the skipped one's place taken by another of the batch's
images, so batches never shift and resuming stays exact (`prepared_batches`).
"""
from __future__ import annotations

import dataclasses
import math
import threading
from typing import Callable, Iterator, Optional

import numpy as np
import tensorflow as tf

from xception_jax.data import crops as eval_crops
from xception_jax.data import preprocessing
from xception_jax.data.bad_images import HINT, SkipLog, listing, undecodable
from xception_jax.data.sources import Part, Source
from xception_jax.models.inputs import Preprocessing

AUTOTUNE = tf.data.AUTOTUNE


def graph_function(fn: Callable) -> Callable:
  """`fn` for `Dataset.map` as written, without AutoGraph's rewriting.

  The preprocessing's conditions are Python values (options, shapes), never
  tensors, so AutoGraph has nothing to convert; its source transformation cost
  each run about 1 s of start-up on two cores (benchmarks/RESULTS.md).
  """
  return tf.autograph.experimental.do_not_convert(fn)


def multi_hot_labels(source: Source) -> bool:
  """Whether a source's labels are multi-hot vectors (multi-label, or sets of answers)."""
  return source.multilabel or source.label_sets


def batch_label(source: Source, label: tf.Tensor) -> tf.Tensor:
  """A source's label as batched: an int32 class, or a float32 multi-hot vector."""
  return tf.cast(label, tf.float32 if multi_hot_labels(source) else tf.int32)


def padding_label(source: Source) -> tf.Tensor:
  """The label of the padding examples that fill an evaluation's last batch."""
  if multi_hot_labels(source):
    return tf.zeros([source.num_classes], tf.float32)
  return tf.constant(0, tf.int32)


def prepared_batches(ds: tf.data.Dataset, prepare, batch_size: int, mode: str = 'error',
                     filler: Optional[tf.data.Dataset] = None,
                     drop_remainder: bool = True) -> tf.data.Dataset:
  """Batches of `prepare(position, example)` over `ds`'s pairs, `batch_size` pairs each.

  'error': a pair that fails to prepare (an image that does not decode) ends
  the iteration with TensorFlow's error. 'skip': each batch is still made of
  the same `batch_size` pairs, without those that fail; their places are
  filled from `filler` (prepared examples), or by default by the batch's own
  good examples again, flagged in `skipped` (int32, 1 for a filled place). A
  batch whose every image fails is left out (the caller notices the shorter
  epoch).
  """
  prepare = graph_function(prepare)
  if mode == 'error':
    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder)
  flag = lambda value: lambda example: {**example, 'skipped': tf.constant(value, tf.int32)}

  def one_batch(positions, examples):
    good = tf.data.Dataset.from_tensor_slices((positions, examples)).map(
        prepare, num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors()
    if filler is not None:
      return good.concatenate(filler).take(batch_size).batch(batch_size)
    return good.map(flag(0)).concatenate(good.repeat().map(flag(1))).take(batch_size).batch(
        batch_size, drop_remainder=True)

  return ds.batch(batch_size, drop_remainder=drop_remainder).interleave(
      one_batch, cycle_length=4, num_parallel_calls=AUTOTUNE, deterministic=True)


def numpy_batches(ds: tf.data.Dataset) -> Iterator:
  """`ds`'s elements as numpy values; once they end (or the caller stops early), the
  iterator is destroyed on a background thread.

  Destroying a tf.data iterator waits for its autotuning thread to wake from a sleep
  that grows while the iterator runs (seconds by the end of an epoch). On the loop's
  own thread that wait stalled training at each epoch's end and evaluation after its
  last batch; TensorFlow releases the GIL while it waits, so another thread hides it.
  """
  holder = [ds.as_numpy_iterator()]
  try:
    yield from holder[0]
  finally:
    threading.Thread(target=holder.clear, name='tf-data-iterator-release', daemon=True).start()


def files_of_batch(ds: tf.data.Dataset, batch_size: int, index: int) -> list[str]:
  """The 'file' names of the pairs that make batch `index` of `prepared_batches(ds, ...)`."""
  names = ds.skip(index * batch_size).take(batch_size).map(lambda _, example: example['file'])
  return [name.decode() for name in names.as_numpy_iterator()]


def bad_image_error(files: list[str], error: Exception, where: str) -> Exception:
  """A ValueError naming the files among `files` that do not decode (`error` itself if none)."""
  problems = undecodable([f for f in files if f])
  if not problems:
    return error
  return ValueError(f'{where}: image {listing(problems)} does not decode; '
                    f'{HINT}.')


def naming_bad_images(batches: Iterator[dict], files_of: Callable[[int], list[str]],
                      where: str) -> Iterator[dict]:
  """`batches`, where an image that does not decode is a ValueError naming its file
  (`files_of(i)`: the files of the i-th batch)."""
  index = 0
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError as e:
      raise bad_image_error(files_of(index), e, where) from None
    index += 1
    yield batch


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

  bad_images: str = 'error'
  skipped: SkipLog = dataclasses.field(default_factory=SkipLog)

  def pairs(self, epoch: int) -> tf.data.Dataset:
    """The (position, example) pairs of this process's part of `epoch`, before decoding."""
    part = Part(self.process_index, self.process_count, block=self.local_batch_size)
    global_batch = self.local_batch_size * self.process_count
    return self.source.read(self.split, part, shuffle_seed=derived_seed(self.seed, epoch),
                            shuffle_buffer=self.shuffle_buffer,
                            limit=self.steps_per_epoch * global_batch)

  def epoch(self, epoch: int, skip_batches: int = 0) -> tf.data.Dataset:
    """Batches of `epoch` from batch `skip_batches` on: {'image', 'label'} (see `batch_label`),
    and 'skipped' (see `prepared_batches`) under bad_images='skip'."""
    epoch_seed = derived_seed(self.seed, epoch)
    ds = self.pairs(epoch).skip(skip_batches * self.local_batch_size)

    def prepare(position, example):
      seed = tf.stack([tf.constant(epoch_seed, tf.int64), position])
      image = preprocessing.preprocess_for_train(example['image'], self.image_size, seed,
                                                 self.augmentation)
      return {'image': image, 'label': batch_label(self.source, example['label'])}

    return prepared_batches(ds, prepare, self.local_batch_size, self.bad_images).prefetch(
        AUTOTUNE)

  def batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Numpy batches for steps start_step, start_step + 1, ... without end.

    An image that does not decode is a ValueError naming its file; under
    bad_images='skip' it is counted in `skipped` instead.
    """
    epoch, skip = divmod(start_step, self.steps_per_epoch)
    while True:
      files = lambda index, epoch=epoch, skip=skip: files_of_batch(
          self.pairs(epoch), self.local_batch_size, skip + index)
      read = 0
      for batch in naming_bad_images(numpy_batches(self.epoch(epoch, skip)), files,
                                     f'{self.split} split, epoch {epoch}'):
        if 'skipped' in batch:
          self.skipped.add(int(batch.pop('skipped').sum()), lambda: files(read))
        read += 1
        yield batch
      if skip + read < self.steps_per_epoch:
        raise ValueError(f'Every image of a batch of epoch {epoch} of the {self.split} split '
                         'failed to decode; check the data set.')
      epoch, skip = epoch + 1, 0


def eval_batches(source: Source, split: str, local_batch_size: int, spec: Preprocessing,
                 crops: Optional[str] = None, process_index: int = 0, process_count: int = 1,
                 num_examples: Optional[int] = None,
                 bad_images: str = 'error') -> tuple[tf.data.Dataset, int]:
  """Every example of `split` once, in padded batches with a 0/1 `mask`.

  Images are made as `spec` says: one central crop each ({'image': [B, size,
  size, 3]}), or with `crops` (a scheme of data/crops.py) all of an image's
  crops ([B, crops, size, size, 3]). Returns the dataset and its number of
  batches, the same on every process (processes with fewer examples get fully
  masked batches), so collective evaluation steps stay in lockstep. Under
  bad_images='skip' an image that does not decode is a masked place of its
  batch (the evaluation counts one fewer).
  """
  total = source.split_size(split) if num_examples is None else num_examples
  per_process = math.ceil(total / process_count)
  num_batches = math.ceil(per_process / local_batch_size)
  size = spec.image_size
  shape = [size, size, 3] if crops is None else [eval_crops.SCHEMES[crops], size, size, 3]

  @graph_function
  def prepare(_, example):
    if crops is None:
      image = preprocessing.preprocess_for_eval(example['image'], size, spec.crop_fraction,
                                                spec)
    else:
      image = eval_crops.eval_crops(example['image'], spec, crops)
    return {'image': image, 'label': batch_label(source, example['label']),
            'mask': tf.constant(1.0)}

  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros(shape), 'label': padding_label(source),
      'mask': tf.constant(0.0)}).repeat()
  pairs = source.read(split, Part(process_index, process_count))
  if bad_images == 'error':
    ds = pairs.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.concatenate(padding).batch(local_batch_size)
  else:
    ds = prepared_batches(pairs, prepare, local_batch_size, bad_images, filler=padding,
                          drop_remainder=False)
    ds = ds.concatenate(padding.batch(local_batch_size))
  return ds.take(num_batches).prefetch(AUTOTUNE), num_batches


def eval_files_of_batch(source: Source, split: str, local_batch_size: int, index: int,
                        process_index: int = 0, process_count: int = 1) -> list[str]:
  """The files of batch `index` of `eval_batches` (to name one that does not decode)."""
  return files_of_batch(source.read(split, Part(process_index, process_count)),
                        local_batch_size, index)
