"""Published ImageNet weights by tag: `model, variables = weights.pretrained(tag)`.

The first call downloads the published file (verified against the hash its
publisher states), converts it once and caches the result as a converted-weights
directory (`checkpoint.save`); later calls load that directory with no network
and no Keras or torch import. Nothing downloaded is ever unpickled: the sources
are Keras `.h5` files and timm `.safetensors` files (timm's Xception exists only
as a pickled `.pth`, so Xception's source is Keras).

Every tag's weights take 299×299 inputs scaled to [−1, 1] and predict the
1,000 ImageNet-1k classes in the standard order (`imagenet.class_names()`).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional

import flax.linen as nn

from xception_jax.models.inputs import Preprocessing
from xception_jax.weights import checkpoint, download, imagenet

KERAS_BASE = 'https://storage.googleapis.com/tensorflow/keras-applications'
KERAS_DOCS = 'Keras documentation, keras.io/api/applications (ImageNet validation)'
TIMM_RESULTS = ('timm results/results-imagenet.csv (ImageNet validation; ReaL and '
                'ImageNet-V2 matched-frequency in results-imagenet-real.csv and '
                'results-imagenetv2-matched-frequency.csv)')


@dataclasses.dataclass(frozen=True)
class PretrainedInfo:
  """Everything about one published set of weights.

  model, options     what `models.create_model(model, **options)` builds for them
  source             'keras' (a weights-only .h5) or 'timm' (a Hub .safetensors)
  url, file_name     where the publisher serves the file
  file_hash          'md5:HEX' as the publisher states it; '' where the Hub's own
                     SHA-256 of the file (its LFS object id) is the reference
  hub_repo           the Hugging Face Hub repository (timm)
  preprocessing      the publisher's evaluation preprocessing
  label_set          'imagenet-1k' (1,000 classes) or 'imagenet-1k+background' (1,001)
  accuracy           ImageNet-1k validation accuracy (%) the publisher reports,
                     {'top1', 'top5'} and, where reported, 'real_top1' and
                     'v2_top1' (ImageNet-ReaL, ImageNet-V2 matched-frequency)
  accuracy_source    where it reports them
  """
  tag: str
  model: str
  options: dict[str, Any]
  source: str
  url: str
  file_name: str
  file_hash: str
  preprocessing: Preprocessing
  accuracy: dict[str, float]
  accuracy_source: str
  hub_repo: str = ''
  label_set: str = 'imagenet-1k'

  @property
  def num_classes(self) -> int:
    return self.options.get('num_classes', 1000)

  @property
  def include_top(self) -> bool:
    return self.options.get('include_top', True)

  def class_names(self) -> Optional[list[str]]:
    """The names of the outputs (None for weights without a classifier)."""
    return imagenet.class_names(self.num_classes) if self.include_top else None


def _keras(model: str, folder: str, file_stem: str, top_md5: str, notop_md5: str,
           accuracy: dict[str, float]) -> list[PretrainedInfo]:
  """The two Keras tags of a model: with the classifier and without it ('_notop')."""
  tags = []
  for suffix, file_suffix, md5, options in (('', '', top_md5, {}),
                                            ('_notop', '_notop', notop_md5,
                                             {'include_top': False})):
    file_name = f'{file_stem}_weights_tf_dim_ordering_tf_kernels{file_suffix}.h5'
    tags.append(PretrainedInfo(
        tag=f'{model}.keras_in1k{suffix}', model=model, options=options, source='keras',
        url=f'{KERAS_BASE}/{folder}/{file_name}', file_name=file_name, file_hash=f'md5:{md5}',
        preprocessing=Preprocessing(299, 0.875, 'bilinear'), accuracy=accuracy,
        accuracy_source=KERAS_DOCS))
  return tags


def _timm(model: str, crop_fraction: float, accuracy: dict[str, float]) -> PretrainedInfo:
  from xception_jax.weights.timm_import import TIMM_NAMES, TIMM_OPTIONS
  repo = f'timm/{TIMM_NAMES[model]}.tf_in1k'
  return PretrainedInfo(
      tag=f'{model}.tf_in1k', model=model, options=dict(TIMM_OPTIONS[model]), source='timm',
      url=f'{download.HUB_ENDPOINT}/{repo}/resolve/main/model.safetensors',
      file_name='model.safetensors', file_hash='', hub_repo=repo,
      preprocessing=Preprocessing(299, crop_fraction, 'bicubic'), accuracy=accuracy,
      accuracy_source=TIMM_RESULTS)


# URLs and md5 hashes: keras/src/applications/{xception,inception_v3,inception_resnet_v2}.py
# (Keras 3.15). timm: the default_cfgs of timm/models/*.py (timm 1.0) and its results/ tables.
PRETRAINED: dict[str, PretrainedInfo] = {info.tag: info for info in [
    *_keras('xception', 'xception', 'xception', '0a58e3b7378bc2990ea3b43d5981f1f6',
            'b0042744bf5b25fce3cb969f33bebb97', {'top1': 79.0, 'top5': 94.5}),
    *_keras('inception_v3', 'inception_v3', 'inception_v3', '9a0d58056eeedaa3f26cb7ebd46da564',
            'bcbd6486424b2319ff4ef7d526e38f63', {'top1': 77.9, 'top5': 93.7}),
    *_keras('inception_resnet_v2', 'inception_resnet_v2', 'inception_resnet_v2',
            'e693bd0210a403b3192acc6073ad2e96', 'd19885ff4a710c122648d3b5c3b684e4',
            {'top1': 80.3, 'top5': 95.3}),
    _timm('inception_v3', 0.875, {'top1': 77.866, 'top5': 93.644, 'real_top1': 84.136,
                                  'v2_top1': 66.300}),
    _timm('inception_v4', 0.875, {'top1': 80.144, 'top5': 94.982, 'real_top1': 86.150,
                                  'v2_top1': 69.390}),
    _timm('inception_resnet_v2', 0.8975, {'top1': 80.434, 'top5': 95.312, 'real_top1': 86.129,
                                          'v2_top1': 70.010}),
]}


def list_pretrained(model: Optional[str] = None) -> list[str]:
  """The tags, sorted; only those of `model` when it is given."""
  return sorted(tag for tag, info in PRETRAINED.items() if model in (None, info.model))


def pretrained_info(tag: str) -> PretrainedInfo:
  """Everything about the weights `tag`; a ValueError listing the tags otherwise."""
  if tag not in PRETRAINED:
    raise ValueError(f'Unknown pretrained weights {tag!r}; available: '
                     f'{", ".join(list_pretrained())}.')
  return PRETRAINED[tag]


def is_tag(name: str) -> bool:
  return name in PRETRAINED


def cached_directory(tag: str) -> Path:
  """Where the converted weights of `tag` are cached."""
  return download.cache_dir() / 'weights' / pretrained_info(tag).tag


def _source_file(info: PretrainedInfo) -> Path:
  if info.source == 'keras':
    return download.fetch_url(info.url, download.cache_dir() / 'downloads' / info.file_name,
                              info.file_hash)
  return download.fetch_hub(info.hub_repo, info.file_name,
                            download.split_hash(info.file_hash)[1] if info.file_hash else None)


def _convert(info: PretrainedInfo, path: Path) -> tuple[nn.Module, dict[str, Any]]:
  if info.source == 'keras':
    from xception_jax.weights.keras_import import keras_to_ours
    model, variables, _ = keras_to_ours(info.model, path, **info.options)
  else:
    from xception_jax.weights.timm_import import timm_to_ours
    model, variables = timm_to_ours(info.model, path, **info.options)
  return model, variables


def pretrained_directory(tag: str) -> Path:
  """The converted-weights directory of `tag`, downloading and converting it the first time.

  Raises a DownloadError (an OSError) when the file cannot be had or does not
  match its published hash; nothing is cached then.
  """
  info = pretrained_info(tag)
  directory = cached_directory(tag)
  if checkpoint.is_converted(directory):
    return directory
  model, variables = _convert(info, _source_file(info))
  hash_note = info.file_hash or 'sha256 as published by the Hub'
  record = checkpoint.describe(model, info.preprocessing, info.class_names(),
                               source=f'{tag}: {info.url} ({hash_note})')
  try:
    checkpoint.save(directory, variables, record)
  except FileExistsError:  # Another process converted it meanwhile.
    pass
  return directory


def pretrained(tag: str, **overrides) -> tuple[nn.Module, dict[str, Any]]:
  """`(model, variables)` of the published weights `tag` (see the module docstring).

  `overrides` go to `create_model` (e.g. `dtype=jnp.bfloat16`); the variables
  are host arrays. `list_pretrained()` names the tags, `pretrained_info(tag)`
  describes one.
  """
  return checkpoint.load(pretrained_directory(tag), **overrides)


def resolve(name_or_directory: str | os.PathLike) -> Path:
  """A converted-weights directory from a tag or a directory (either layout)."""
  name = os.fspath(name_or_directory)
  if is_tag(name):
    return pretrained_directory(name)
  path = Path(name)
  if not path.is_dir():
    raise FileNotFoundError(f'{name} is neither a pretrained tag ({", ".join(list_pretrained())}) '
                            'nor a converted-weights directory.')
  return path
