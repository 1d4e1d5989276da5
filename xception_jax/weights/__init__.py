"""Weights: published ImageNet weights by tag, import from Keras and timm, converted-weight
directories that know their model."""
from xception_jax.weights.checkpoint import (WeightsInfo, describe, is_converted, load, load_info,
                                             load_variables, read_class_names, save,
                                             save_variables)
from xception_jax.weights.convert import convert_file
from xception_jax.weights.download import DownloadError
from xception_jax.weights.imagenet import class_names as imagenet_class_names
from xception_jax.weights.keras_import import from_keras, keras_to_ours
from xception_jax.weights.published import (PretrainedInfo, list_pretrained, pretrained,
                                            pretrained_directory, pretrained_info, resolve)
from xception_jax.weights.timm_import import from_timm, timm_model, timm_to_ours

__all__ = ['DownloadError', 'PretrainedInfo', 'WeightsInfo', 'convert_file', 'describe',
           'from_keras', 'from_timm',
           'imagenet_class_names', 'is_converted', 'keras_to_ours', 'list_pretrained', 'load',
           'load_info', 'load_variables', 'pretrained', 'pretrained_directory', 'pretrained_info',
           'read_class_names', 'resolve', 'save', 'save_variables', 'timm_model', 'timm_to_ours']
