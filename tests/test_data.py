"""Input pipeline: Inception preprocessing, resumable training stream, exact evaluation."""
import threading

import numpy as np
import pytest
import tensorflow as tf

from data_helpers import image_ids, make_image_folder
from xception_jax.data import pipeline, preprocessing, sources
from xception_jax.models.inputs import Preprocessing


def gradient_image(height, width):
  y, x = np.mgrid[0:height, 0:width]
  return np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)


@pytest.mark.parametrize('encode', [tf.io.encode_png, tf.io.encode_jpeg])
def test_eval_preprocessing_is_central_crop_then_resize(encode):
  encoded = encode(gradient_image(100, 80))
  ours = preprocessing.preprocess_for_eval(encoded, 40).numpy()
  # Reference: decode everything, TF's own central_crop, bilinear resize, [-1, 1].
  decoded = tf.image.convert_image_dtype(tf.io.decode_image(encoded, channels=3), tf.float32)
  expected = tf.image.resize(tf.image.central_crop(decoded, 0.875), [40, 40], 'bilinear')
  np.testing.assert_allclose(ours, (expected.numpy() - 0.5) * 2, atol=1e-6)


def test_train_preprocessing_is_seeded_and_in_range():
  encoded = tf.io.encode_jpeg(gradient_image(120, 90))
  run = lambda seed: preprocessing.preprocess_for_train(
      encoded, 64, tf.constant(seed, tf.int64)).numpy()
  a, b, c = run([1, 2]), run([1, 2]), run([1, 3])
  assert a.shape == (64, 64, 3) and a.dtype == np.float32
  assert a.min() >= -1.0 and a.max() <= 1.0
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 0.05


def test_slow_colour_mode_and_bad_mode():
  encoded = tf.io.encode_png(gradient_image(50, 50))
  slow = preprocessing.Augmentation(color_distortion='slow')
  assert preprocessing.preprocess_for_train(encoded, 32, tf.constant([0, 0], tf.int64),
                                            slow).shape == (32, 32, 3)
  with pytest.raises(ValueError, match="color_distortion must be 'fast', 'slow' or None"):
    preprocessing.preprocess_for_train(encoded, 32, tf.constant([0, 0], tf.int64),
                                       preprocessing.Augmentation(color_distortion='wild'))


def stream(root, **overrides):
  source = sources.FolderSource(root)
  options = dict(source=source, split='train', local_batch_size=4, image_size=16, seed=3,
                 steps_per_epoch=source.split_size('train') // 4,
                 augmentation=preprocessing.Augmentation(color_distortion=None, flip=False))
  options.update(overrides)
  return pipeline.TrainStream(**options)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_training_stream_resumes_exactly_and_covers_each_epoch_once(tmp_path):
  root = make_image_folder(tmp_path, classes=3, per_class=7)  # 21 train images: 5 steps/epoch.
  s = stream(root)
  straight = take(s.batches(0), 12)
  resumed = take(s.batches(7), 5)  # Stop after step 7 (mid-epoch 2), resume.
  for a, b in zip(straight[7:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  for epoch in range(2):
    ids = np.concatenate([image_ids(b['image']) for b in straight[5 * epoch:5 * epoch + 5]])
    assert len(set(ids)) == 20  # 5 batches of 4 distinct images, none repeated.
    assert set(ids) <= set(range(21))
  first, second = (np.concatenate([image_ids(b['image']) for b in straight[i:i + 5]])
                   for i in (0, 5))
  assert list(first) != list(second)  # Each epoch has its own order.
  labels = np.concatenate([b['label'] for b in straight])
  ids = np.concatenate([image_ids(b['image']) for b in straight])
  np.testing.assert_array_equal(labels, ids // 7)  # Labels travel with their images.


def test_two_processes_split_the_training_data(tmp_path):
  root = make_image_folder(tmp_path, classes=2, per_class=8)
  parts = [np.concatenate([image_ids(b['image']) for b in take(
      stream(root, local_batch_size=2, steps_per_epoch=4, process_index=i,
             process_count=2).batches(0), 4)]) for i in range(2)]
  assert not set(parts[0]) & set(parts[1])
  assert len(set(parts[0]) | set(parts[1])) == 16


def test_global_batches_do_not_depend_on_the_process_count(tmp_path):
  root = make_image_folder(tmp_path, classes=3, per_class=8)  # 24 images: 3 steps of 8.
  one = take(stream(root, local_batch_size=8, steps_per_epoch=3).batches(0), 4)
  parts = [take(stream(root, local_batch_size=4, steps_per_epoch=3, process_index=i,
                       process_count=2).batches(0), 4) for i in range(2)]
  for step, batch in enumerate(one):  # Process 0's batch, then process 1's: the same images.
    together = np.concatenate([parts[0][step]['image'], parts[1][step]['image']])
    np.testing.assert_array_equal(together, batch['image'])


@pytest.mark.parametrize('process_count', [1, 2, 3])
def test_evaluation_counts_every_example_exactly_once(tmp_path, process_count):
  root = make_image_folder(tmp_path, classes=3, per_class=5, splits=('train', 'test'))
  source = sources.FolderSource(root)
  seen, batch_counts = [], set()
  for index in range(process_count):
    ds, num_batches = pipeline.eval_batches(source, 'test', 4, Preprocessing(16),
                                            process_index=index, process_count=process_count)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == num_batches
    batch_counts.add(num_batches)
    for b in batches:
      assert b['image'].shape == (4, 16, 16, 3)
      seen.extend(image_ids(b['image'])[b['mask'] == 1])
  assert len(batch_counts) == 1  # Every process runs the same number of steps.
  assert sorted(seen) == list(range(15, 30))  # The 15 test images, each once.


@pytest.mark.parametrize('read', ['all', 'two'])
def test_an_iterator_is_destroyed_off_the_loops_thread(read):
  """Destroying a tf.data iterator can wait seconds for its autotuning thread: the loop that
  read it goes on while a background thread does it, whether it read everything or not."""
  destroyed = []

  class Iterator:
    def __init__(self):
      self.values = iter(range(5))

    def __iter__(self):
      return self

    def __next__(self):
      return next(self.values)

    def __del__(self):
      destroyed.append(threading.current_thread())

  class Dataset:
    def as_numpy_iterator(self):
      return Iterator()

  batches = pipeline.numpy_batches(Dataset())
  got = list(batches) if read == 'all' else [next(batches), next(batches)]
  if read == 'two':
    batches.close()
  assert got == list(range(5 if read == 'all' else 2))
  for thread in threading.enumerate():
    if thread.name == 'tf-data-iterator-release':
      thread.join()
  assert len(destroyed) == 1 and destroyed[0] is not threading.current_thread()
  assert destroyed[0].name == 'tf-data-iterator-release'


def test_folder_source_errors(tmp_path):
  with pytest.raises(ValueError, match='has no train/ sub-folder'):
    sources.FolderSource(tmp_path)
  make_image_folder(tmp_path, classes=2, per_class=1, splits=('train',))
  with pytest.raises(ValueError, match="has no split 'validation'"):
    sources.FolderSource(tmp_path).split_size('validation')


def test_unknown_dataset_name():
  with pytest.raises(ValueError, match="Unknown dataset 'not_a_dataset_xyz'"):
    sources.get_source('not_a_dataset_xyz')


def test_imagenet_without_manual_download_explains_preparation(tmp_path):
  with pytest.raises(ValueError, match='ILSVRC2012_img_train.tar.*manual_dir'):
    sources.get_source('imagenet2012', data_dir=str(tmp_path / 'tfds'),
                       manual_dir=str(tmp_path / 'empty'))


def test_digits_folder_is_written_once(tmp_path):
  source = sources.get_source('digits', data_dir=str(tmp_path))
  assert source.class_names == [str(i) for i in range(10)]
  assert source.split_size('train') + source.split_size('test') == 1797
  assert source.split_size('test') == 355
  stamp = (tmp_path / 'digits' / '.complete').stat().st_mtime
  sources.get_source('digits', data_dir=str(tmp_path))
  assert (tmp_path / 'digits' / '.complete').stat().st_mtime == stamp


def test_the_input_pipeline_loads_tensorflow_without_keras_and_keras_still_imports():
  import subprocess
  import sys
  script = ('import sys; from xception_jax.data import pipeline; '
            'print(sorted(m for m in ("keras", "sklearn") if m in sys.modules)); '
            'import keras.src.optimizers; print(keras.src.optimizers.SGD.__name__)')
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                       check=True, env={'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3',
                                        'KERAS_BACKEND': 'jax', 'PATH': ''}).stdout
  assert out.split() == ['[]', 'SGD']


def test_an_image_file_is_read_with_the_eval_preprocessing_and_a_bad_one_named(tmp_path):
  good, bad = tmp_path / 'good.png', tmp_path / 'bad.jpg'
  good.write_bytes(tf.io.encode_png(gradient_image(50, 60)).numpy())
  bad.write_bytes(b'not an image')
  spec = Preprocessing(32, 0.875)
  np.testing.assert_array_equal(preprocessing.eval_image_file(str(good), spec),
                                preprocessing.preprocess_for_eval(
                                    tf.io.read_file(str(good)), 32, 0.875, spec).numpy())
  with pytest.raises(ValueError, match=rf'^{bad} is not a decodable image \(JPEG, PNG'):
    preprocessing.eval_image_file(str(bad), spec)
