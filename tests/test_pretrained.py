"""Published weights by tag: downloaded once and verified against the publisher's hash,
converted once, cached, and loaded again with no network and no Keras; all served from
127.0.0.1, in the official file formats, with random weights."""
import dataclasses
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import random_variables, timm_state_dict
from http_helpers import serving
from run_helpers import environment
from xception_jax import models, weights
from xception_jax.weights import download, published

KERAS_TAG = 'xception.keras_in1k_notop'
HUB_TAG = 'inception_v3.tf_in1k'


@pytest.fixture
def cache(tmp_path, monkeypatch):
  """An empty cache, downloads allowed, no mirror."""
  for name in (download.OFFLINE_ENV, 'HF_HUB_OFFLINE', download.MIRROR_ENV):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / 'cache'))
  return tmp_path / 'cache'


def files_under(path: Path) -> list[str]:
  return sorted(str(p.relative_to(path)) for p in path.rglob('*') if p.is_file()) \
      if path.exists() else []


def publish(monkeypatch, tag: str, **changes) -> published.PretrainedInfo:
  """The registry's entry for `tag` with `changes` (e.g. the hash of the test's file)."""
  info = dataclasses.replace(published.pretrained_info(tag), **changes)
  monkeypatch.setitem(published.PRETRAINED, tag, info)
  return info


def total(variables) -> float:
  return sum(float(np.abs(np.asarray(x, np.float64)).sum()) for x in jax.tree.leaves(variables))


@pytest.fixture(scope='session')  # Once per worker (test_keras_xception.py says why).
def keras_notop_file(tmp_path_factory):
  """The official no-top Xception weights file's format, with random weights (and the
  Keras model, whose conversion is the expected result)."""
  import keras
  from keras_helpers import randomize_batch_norm, save_legacy_weights
  backbone = keras.applications.Xception(weights=None, include_top=False)
  randomize_batch_norm(backbone, seed=0)
  path = tmp_path_factory.mktemp('keras') / published.pretrained_info(KERAS_TAG).file_name
  save_legacy_weights(backbone, path)
  return path, weights.from_keras('xception', backbone)


@pytest.mark.long(seconds=25)
def test_keras_tag_downloads_once_converts_once_and_loads_without_network(
    cache, keras_notop_file, monkeypatch):
  path, expected = keras_notop_file
  data = path.read_bytes()
  info = publish(monkeypatch, KERAS_TAG, file_hash='md5:' + hashlib.md5(data).hexdigest())
  with serving() as served:
    served.files[f'/{info.file_name}'] = data
    monkeypatch.setenv(download.MIRROR_ENV, served.url)
    model, variables = weights.pretrained(KERAS_TAG)
    again_model, again = weights.pretrained(KERAS_TAG)
    assert served.requests == [('GET', f'/{info.file_name}')]  # One download, then the cache.
  assert not model.include_top and again_model == model
  jax.tree.map(np.testing.assert_array_equal, variables, expected)
  jax.tree.map(np.testing.assert_array_equal, again, expected)
  assert files_under(cache / 'downloads') == [info.file_name]
  recorded = weights.load_info(cache / 'weights' / KERAS_TAG)
  # Keras' include_top=False: the feature map, unpooled.
  assert (recorded.model, recorded.options) == ('xception', {'num_classes': 1000,
                                                             'include_top': False,
                                                             'pooling': None})
  assert recorded.preprocessing == info.preprocessing and recorded.class_names is None

  # A new process, the server gone and every connection refused: the cache alone, no Keras,
  # torch or TensorFlow imported.
  script = (
      'import socket, sys\n'
      'def refuse(*args, **kwargs): raise OSError("a connection was attempted")\n'
      'socket.socket.connect = socket.create_connection = refuse\n'
      'import jax, numpy as np\n'
      'from xception_jax import weights\n'
      f'model, variables = weights.pretrained({KERAS_TAG!r})\n'
      'print(sorted(m for m in ("keras", "torch", "tensorflow") if m in sys.modules))\n'
      'print(sum(float(np.abs(np.asarray(x, np.float64)).sum()) for x in jax.tree.leaves(variables)))\n')
  env = {**environment(devices=1), download.CACHE_ENV: str(cache)}
  env.pop(download.MIRROR_ENV, None)
  result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  imported, checksum = result.stdout.strip().splitlines()[-2:]
  assert imported == '[]'
  assert float(checksum) == pytest.approx(total(expected), rel=1e-12)


def test_a_hash_mismatch_keeps_nothing_and_names_url_and_hashes(cache, monkeypatch):
  data = b'not the published weights' * 100
  info = publish(monkeypatch, KERAS_TAG, file_hash='md5:' + '0' * 32)
  with serving() as served:
    served.files[f'/{info.file_name}'] = data
    monkeypatch.setenv(download.MIRROR_ENV, served.url)
    with pytest.raises(weights.DownloadError) as raised:
      weights.pretrained(KERAS_TAG)
  message = str(raised.value)
  assert message == (f'{served.url}/{info.file_name} has md5 {hashlib.md5(data).hexdigest()}, '
                     f'not the published {"0" * 32}; nothing was kept (a changed or damaged '
                     'file, or a wrong mirror).')
  assert files_under(cache) == []
  # A damaged file already in the cache is named, never used nor silently replaced.
  (cache / 'downloads').mkdir(parents=True, exist_ok=True)  # Left empty by the download.
  (cache / 'downloads' / info.file_name).write_bytes(data)
  with pytest.raises(weights.DownloadError, match=f'{info.file_name} has md5 .*, not the '
                                                  'published 0{32}: delete it to download'):
    weights.pretrained(KERAS_TAG)


def test_an_interrupted_download_keeps_nothing(cache, monkeypatch):
  data = os.urandom(300_000)
  info = publish(monkeypatch, KERAS_TAG, file_hash='md5:' + hashlib.md5(data).hexdigest())
  with serving() as served:
    served.files[f'/{info.file_name}'] = data
    served.truncate[f'/{info.file_name}'] = 100_000
    monkeypatch.setenv(download.MIRROR_ENV, served.url)
    with pytest.raises(weights.DownloadError, match=r'^Downloading http://127\.0\.0\.1:\d+/'
                                                    rf'{info.file_name} (broke off after|failed)'):
      weights.pretrained(KERAS_TAG)
  assert files_under(cache) == []


def test_offline_without_the_file_says_what_to_fetch_and_where(cache, monkeypatch):
  info = published.pretrained_info(KERAS_TAG)
  monkeypatch.setenv(download.OFFLINE_ENV, '1')
  with pytest.raises(weights.DownloadError) as raised:
    weights.pretrained(KERAS_TAG)
  assert str(raised.value) == (
      f'{info.file_name} is not in the cache and downloads are off (XCEPTION_JAX_OFFLINE or '
      f'HF_HUB_OFFLINE): fetch {info.url} and save it as {cache / "downloads" / info.file_name} '
      f'({info.file_hash.replace(":", " ")}), or set XCEPTION_JAX_WEIGHTS_MIRROR.')
  assert files_under(cache) == []


@pytest.fixture
def hub(tmp_path, monkeypatch):
  """A Hub on 127.0.0.1 with a narrow inception_v3 in timm's safetensors format as HUB_TAG.

  huggingface_hub reads HF_HOME when it is imported (a user sets it before starting Python);
  here its cache constant is set for the test.
  """
  import huggingface_hub.constants as hub_constants
  from safetensors.numpy import save_file
  info = published.pretrained_info(HUB_TAG)
  narrow = models.InceptionV3.tiny_options  # timm's layout is full depth: narrower only.
  info = publish(monkeypatch, HUB_TAG, options={**info.options, **narrow})
  model = weights.timm_model('inception_v3', **narrow)
  variables = random_variables(model)
  save_file(timm_state_dict('inception_v3', model, variables), tmp_path / 'model.safetensors')
  with serving() as served:
    served.files[f'/{info.hub_repo}/resolve/main/model.safetensors'] = \
        (tmp_path / 'model.safetensors').read_bytes()
    monkeypatch.setattr(hub_constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))
    monkeypatch.setenv('HF_ENDPOINT', served.url)
    yield served, variables, tmp_path / 'hf'


def test_hub_weights_are_checked_against_the_sha256_the_hub_publishes(cache, hub, monkeypatch):
  served, expected, hf_cache = hub
  path = '/timm/inception_v3.tf_in1k/resolve/main/model.safetensors'
  served.hub_sha256[path] = 'f' * 64  # The Hub announces another file than it sends.
  with pytest.raises(weights.DownloadError, match=rf'^{served.url}{path} has sha256 [0-9a-f]{{64}}'
                                                  rf', not the published f{{64}}; it was removed'):
    weights.pretrained(HUB_TAG)
  assert [p for p in files_under(hf_cache) if '/blobs/' in p] == [] and files_under(cache) == []

  del served.hub_sha256[path]
  model, variables = weights.pretrained(HUB_TAG)
  assert model.bn_scale and model.avg_pool_count_include_pad  # timm's options.
  assert model.width_multiplier == 0.25
  jax.tree.map(np.testing.assert_array_equal, variables, expected)
  assert weights.load_info(cache / 'weights' / HUB_TAG).preprocessing.resize == 'bicubic'

  # Offline, with only the Hub's cache (the converted weights removed): converted again.
  import shutil
  shutil.rmtree(cache / 'weights')
  count = len(served.requests)
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  _, offline = weights.pretrained(HUB_TAG)
  assert len(served.requests) == count
  jax.tree.map(np.testing.assert_array_equal, offline, expected)


def test_every_tag_says_where_its_weights_come_from_and_how_they_evaluate():
  keras_names = {'xception': 'Xception', 'inception_v3': 'InceptionV3',
                 'inception_resnet_v2': 'InceptionResNetV2'}
  tags = weights.list_pretrained()
  assert set(weights.list_pretrained('inception_v4')) == {'inception_v4.tf_in1k'}
  for tag in tags:
    info = weights.pretrained_info(tag)
    assert tag.startswith(info.model + '.') and info.url.endswith('/' + info.file_name)
    model = models.create_model(info.model, **info.options)
    assert info.preprocessing.image_size == 299 and info.preprocessing.minus_one_to_one
    if info.source == 'keras':
      assert info.model in keras_names and re.fullmatch(r'md5:[0-9a-f]{32}', info.file_hash)
      assert info.preprocessing.resize == 'bilinear'
    else:
      assert info.hub_repo.startswith('timm/') and info.preprocessing.resize == 'bicubic'
      assert model.bn_scale  # timm's weights need its BN with scale.
    if info.include_top:
      assert 50 < info.accuracy['top1'] < info.accuracy['top5'] < 100
      assert len(info.class_names()) == model.num_classes == 1000
  with pytest.raises(ValueError, match=r"Unknown pretrained weights 'xception\.imagenet'; "
                                       r'available: inception_resnet_v2\.keras_in1k, '):
    weights.pretrained_info('xception.imagenet')


def test_imagenet_class_names_follow_the_tfds_label_order():
  import tensorflow_datasets as tfds
  labels = Path(tfds.__file__).parent / 'datasets' / 'imagenet2012' / 'labels.txt'
  assert weights.imagenet.wordnet_ids() == labels.read_text().split()
  names = weights.imagenet_class_names()
  assert len(set(names)) == 1000 and names[0] == 'tench'
  assert weights.imagenet_class_names(1001)[:2] == ['background', 'tench']
