"""Image files that do not decode: named at indexing or decoding, or skipped and counted."""
import io

import numpy as np
import pytest
import tensorflow as tf

from data_helpers import image_ids, make_image_folder
from xception_jax.data import bad_images, pipeline, preprocessing, sources
from xception_jax.models.inputs import Preprocessing

PLAIN = preprocessing.Augmentation(color_distortion=None, flip=False, area_range=(1.0, 1.0),
                                   min_object_covered=1.0)


def solid(image_id, label=0, size=(24, 30)):
  image = np.zeros((*size, 3), np.uint8)
  image[..., 0], image[..., 1] = image_id, 10 * label
  return image


def cmyk_jpeg(image):
  """A CMYK JPEG (ImageNet holds 22), written with Pillow."""
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(image).convert('CMYK').save(buffer, format='JPEG', quality=100)
  return buffer.getvalue()


def folder_with(tmp_path, files):
  """A 4-class × 4-image folder (ids 0-15 train, 16-31 test) plus `files` in train/class_0."""
  root = make_image_folder(tmp_path / 'data', classes=4, per_class=4)
  for name, data in files.items():
    (root / 'train' / 'class_0' / name).write_bytes(data)
  return root


def truncated_jpeg(image_id):
  data = tf.io.encode_jpeg(solid(image_id)).numpy()
  return data[:len(data) // 2]


def test_files_that_cannot_be_images_are_named_at_indexing(tmp_path, caplog):
  root = folder_with(tmp_path, {'empty.jpg': b'', 'notes.jpg': b'not an image\n'})
  with pytest.raises(ValueError) as raised:
    sources.FolderSource(root).files('train')
  assert str(raised.value) == (
      f'2 file(s) in {root}/train are not images: {root}/train/class_0/empty.jpg (empty file); '
      f'{root}/train/class_0/notes.jpg (not a JPEG, PNG, GIF or BMP file); remove or replace '
      'them, or set --config.bad_images=skip to skip such files.')
  with caplog.at_level('WARNING'):
    paths, _ = sources.FolderSource(root, bad_images='skip').files('train')
  assert len(paths) == 16 and 'Skipping 2 file(s)' in caplog.text


def test_grayscale_cmyk_and_png_named_jpg_decode(tmp_path):
  root = folder_with(tmp_path, {
      'gray.jpg': tf.io.encode_jpeg(solid(100)[..., :1]).numpy(),
      'cmyk.jpg': cmyk_jpeg(solid(101)),
      'png.jpg': tf.io.encode_png(solid(102)).numpy()})
  paths, _ = sources.FolderSource(root).files('train')
  assert len(paths) == 19
  assert bad_images.undecodable(paths) == []
  for name in ('gray.jpg', 'cmyk.jpg', 'png.jpg'):
    data = (root / 'train' / 'class_0' / name).read_bytes()
    image = preprocessing.preprocess_for_train(tf.constant(data), 16, tf.constant([0, 0],
                                               tf.int64), PLAIN).numpy()
    assert image.shape == (16, 16, 3)
  red = lambda name: image_ids(preprocessing.preprocess_for_eval(
      (root / 'train' / 'class_0' / name).read_bytes(), 16).numpy()[None])[0]
  assert (red('png.jpg'), red('gray.jpg')) == (102, 100)  # Gray: red = the gray level.
  assert abs(red('cmyk.jpg') - 101) <= 3  # Through CMYK and back, JPEG-rounded.


def stream(root, mode, batch=4):
  source = sources.FolderSource(root, bad_images=mode)
  return pipeline.TrainStream(source=source, split='train', local_batch_size=batch,
                              image_size=16, seed=3,
                              steps_per_epoch=source.split_size('train') // batch,
                              augmentation=PLAIN, bad_images=mode)


def ids_of(batches, n):
  return [sorted(image_ids(next(batches)['image']).tolist()) for _ in range(n)]


def test_a_file_that_fails_to_decode_is_named_at_its_batch(tmp_path):
  root = folder_with(tmp_path, {'broken.jpg': truncated_jpeg(200)})
  with pytest.raises(ValueError) as raised:
    list(zip(range(20), stream(root, 'error').batches()))
  message = str(raised.value)
  assert message.startswith(f'train split, epoch 0: image {root}/train/class_0/broken.jpg (')
  assert message.endswith(') does not decode; remove or replace it, or set '
                          '--config.bad_images=skip to skip such files.')


def test_skipped_images_keep_every_batch_in_place(tmp_path):
  """17 files, 4 per batch: the skipped file's place in its batch goes to another image of the
  same batch; every other batch, and resuming anywhere, is as without the bad file."""
  good = stream(folder_with(tmp_path / 'good', {'broken.jpg': tf.io.encode_jpeg(
      solid(200)).numpy()}), 'error')
  skipping = stream(folder_with(tmp_path / 'bad', {'broken.jpg': truncated_jpeg(200)}), 'skip')
  steps = 3 * good.steps_per_epoch  # Three epochs, each reshuffled.
  want, got = ids_of(good.batches(), steps), ids_of(skipping.batches(), steps)
  assert skipping.skipped.count == 3  # Once per epoch (16 of 17 files are read per epoch) ...
  assert [f for f, _ in skipping.skipped.files] == [
      str(tmp_path / 'bad/data/train/class_0/broken.jpg')] * 3
  differing = [(w, g) for w, g in zip(want, got) if w != g]
  assert len(differing) == 3
  for w, g in differing:  # ... where 200 is replaced by one of its batch's other images.
    assert 200 in w and 200 not in g and len(g) == len(w)
    assert sorted(set(g)) == sorted(set(w) - {200})
  resumed = stream(folder_with(tmp_path / 'bad2', {'broken.jpg': truncated_jpeg(200)}), 'skip')
  assert ids_of(resumed.batches(5), steps - 5) == got[5:]


def test_evaluation_names_or_masks_an_image_that_does_not_decode(tmp_path):
  root = make_image_folder(tmp_path / 'data', classes=2, per_class=3)  # test: ids 6-11.
  (root / 'test' / 'class_1' / '010.png').write_bytes(
      tf.io.encode_png(solid(10)).numpy()[:60])  # A PNG cut short.
  source = sources.FolderSource(root)
  ds, count = pipeline.eval_batches(source, 'test', 4, Preprocessing(16),
                                    bad_images='skip')
  batches = list(ds.as_numpy_iterator())
  assert count == len(batches) == 2 and all(len(b['mask']) == 4 for b in batches)
  kept = np.concatenate([image_ids(b['image'])[b['mask'] > 0] for b in batches])
  assert sorted(kept.tolist()) == [6, 7, 8, 9, 11]
  ds, _ = pipeline.eval_batches(source, 'test', 4, Preprocessing(16))
  files_of = lambda index: pipeline.eval_files_of_batch(source, 'test', 4, index)
  with pytest.raises(ValueError) as raised:  # As the evaluator reads its batches.
    list(pipeline.naming_bad_images(ds.as_numpy_iterator(), files_of, 'test split (evaluation)'))
  assert str(raised.value).startswith(
      f'test split (evaluation): image {root}/test/class_1/010.png (')
