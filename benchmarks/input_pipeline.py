r"""Input-pipeline throughput: Inception training preprocessing from JPEG files.

  python -m benchmarks.input_pipeline --images=256 --image_size=299 --threads=1

Writes a folder of ImageNet-sized JPEGs (smooth gradients plus noise, about
the file size of real photos), then times the training stream of
`xception_jax.data.pipeline` (read, decode_and_crop_jpeg of a distorted
bounding box, resize, flip, colour distortion, batch) with tf.data limited to
`--threads` threads. Reports images/s and images/s per thread (core), the
median of `--repeats` passes after a warm-up pass.
"""
from __future__ import annotations

import datetime
import platform
import shlex
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import app, flags

from benchmarks.throughput import load, machine
from xception_jax.data import pipeline, sources

_IMAGES = flags.DEFINE_integer('images', 256, 'JPEG files to write (one epoch).')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 299, 'Output size.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Batch size.')
_THREADS = flags.DEFINE_integer('threads', 1, 'tf.data threads (cores) to allow.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed passes over the images.')
_RESULTS = flags.DEFINE_string('results', '', 'Markdown file to append the result to.')


def write_jpegs(root: Path, count: int, seed: int = 0) -> Path:
  """root/train/<class>/*.jpg: `count` photo-sized (e.g. 500×375) JPEGs in 10 classes."""
  rng = np.random.default_rng(seed)
  for i in range(count):
    height, width = rng.integers(300, 500), rng.integers(375, 640)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (height + width)], -1)
    image = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    path = root / 'train' / str(i % 10) / f'{i:05d}.jpg'
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_jpeg(image, quality=90).numpy())
  return root


def measure(root: Path, image_size: int, batch: int, threads: int, repeats: int) -> dict:
  source = sources.FolderSource(root)
  steps = source.split_size('train') // batch
  stream = pipeline.TrainStream(source, 'train', batch, image_size, seed=0,
                                steps_per_epoch=steps)
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1

  def one_pass(epoch):
    # The clock starts at the first batch: building an epoch's pipeline (tracing the
    # preprocessing) is a once-per-epoch cost, negligible over ImageNet's 1.28M images.
    batches = pipeline.numpy_batches(stream.epoch(epoch).with_options(options))
    next(batches)
    started = time.perf_counter()
    for _ in batches:
      pass
    return (steps - 1) * batch / (time.perf_counter() - started)

  one_pass(0)  # Warm-up: graph building, file cache.
  rates = [one_pass(epoch) for epoch in range(1, repeats + 1)]
  rate = statistics.median(rates)
  return {'images_per_second': rate, 'per_thread': rate / threads, 'threads': threads}


def main(argv):
  with tempfile.TemporaryDirectory() as tmp:
    root = write_jpegs(Path(tmp), _IMAGES.value)
    sizes = [p.stat().st_size for p in root.rglob('*.jpg')]
    result = measure(root, _IMAGE_SIZE.value, _BATCH.value, _THREADS.value, _REPEATS.value)
  line = (f'| {datetime.date.today()} | {platform.processor() or platform.machine()} | '
          f'tf {tf.__version__} | {_THREADS.value} | {_IMAGE_SIZE.value} | '
          f'{np.mean(sizes) / 1024:.0f} KiB | {result["images_per_second"]:.0f} | '
          f'{result["per_thread"]:.0f} |')
  print('| date | cpu | versions | threads | size | mean JPEG | images/s | images/s per thread |')
  print(line)
  if _RESULTS.value:
    command = 'python -m benchmarks.input_pipeline ' + ' '.join(shlex.quote(a) for a in argv[1:])
    with open(_RESULTS.value, 'a') as f:
      f.write(f'\n## {datetime.datetime.now():%Y-%m-%d %H:%M}: input pipeline, Inception training '
              f'preprocessing from JPEG\n\n- command: `{command}`\n- machine: {machine()}\n'
              f'- load average (1, 5, 15 min) after: {load()}\n\n'
              '| date | cpu | versions | threads | size | mean JPEG | images/s '
              '| images/s per thread |\n|---|---|---|---|---|---|---|---|\n' + line + '\n')


if __name__ == '__main__':
  app.run(main)
