"""Variables for our models from Keras `applications` models or their saved files.

Models: an application (`keras.applications.Xception`, ...), or a fine-tuned
classifier built on one (nested as a sub-model or inlined) with a head of
global pooling, Dense and Dropout layers. Sources: a `keras.Model`; a `.keras`
file; a full-model `.h5`; a weights-only `.h5` (the format of the official
Keras ImageNet weights) or `.weights.h5`, loaded into a freshly built Keras
application. Keras is imported lazily, so using the models never needs it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional

import flax.linen as nn
import numpy as np

from xception_jax import models
from xception_jax.weights import tree

KERAS_APPLICATIONS = {'xception': 'Xception', 'inception_v3': 'InceptionV3',
                      'inception_resnet_v2': 'InceptionResNetV2'}
Order = list[tuple[tree.Path, str]]
_MAPPERS: dict[str, Callable[[list['KerasLayer'], Order], tree.Converted]] = {}


class KerasLayer:
  """A Keras layer's name, class name and variables by short name (numpy)."""

  def __init__(self, name: str, kind: str, variables: dict[str, np.ndarray]):
    self.name, self.kind, self.variables = name, kind, variables

  def norm(self) -> dict[str, Optional[np.ndarray]]:
    """Batch norm variables under our names (scale is None for scale=False)."""
    v = self.variables
    return {'scale': v.get('gamma'), 'bias': v['beta'], 'mean': v['moving_mean'],
            'var': v['moving_variance']}


def register_mapper(name: str):
  """Decorator: `fn(layers, order) -> tree.Converted` converts Keras model `name`'s backbone.

  `order` is our model's `tree.layer_order`, for sources whose layers pair by position.
  """
  def register(fn):
    _MAPPERS[name] = fn
    return fn
  return register


def _all_layers(model) -> Iterator[Any]:
  """Every layer of `model` in graph order, nested models replaced by their own layers."""
  for layer in model.layers:
    if hasattr(layer, 'layers'):
      yield from _all_layers(layer)
    else:
      yield layer


def keras_layer(layer) -> KerasLayer:
  variables = {w.path.split('/')[-1]: np.asarray(w.numpy()) for w in layer.weights}
  return KerasLayer(layer.name, type(layer).__name__, variables)


def keras_layers(model) -> list[KerasLayer]:
  """Every Keras layer that holds variables, in model order."""
  return [keras_layer(layer) for layer in _all_layers(model) if layer.weights]


def _classes_in_weights_file(path: Path) -> Optional[int]:
  """Output classes of the dense layer in a weights-only h5 file; None if it has none."""
  import h5py
  with h5py.File(path, 'r') as f:
    if 'layer_names' in f.attrs:  # Keras 2 / legacy format (official weights).
      names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs['layer_names']]
      if 'predictions' not in names:
        return None
      group = f['predictions']
      kernel = [group[n] for n in group.attrs['weight_names'] if 'kernel' in str(n)][0]
      return int(kernel.shape[-1])
    if 'layers' in f:  # Keras 3 `.weights.h5`.
      dense = f['layers'].get('dense')
      return None if dense is None else int(dense['vars']['0'].shape[-1])
  raise ValueError(f'{path} is not a Keras weights file (no layer_names, no layers group).')


def load_keras_model(name: str, model_or_path: Any):
  """A `keras.Model` from a model object or a `.keras` / `.h5` / `.weights.h5` file."""
  import keras
  if isinstance(model_or_path, keras.Model):
    return model_or_path
  path = Path(os.fspath(model_or_path))
  if not path.is_file():
    raise FileNotFoundError(f'No Keras model or weights file at {path}.')
  if path.suffix == '.keras':
    return keras.saving.load_model(path, compile=False)
  if path.suffix not in ('.h5', '.hdf5'):
    raise ValueError(f'{path}: expected a .keras, .h5 or .weights.h5 file.')
  import h5py
  with h5py.File(path, 'r') as f:
    full_model = 'model_config' in f.attrs
  if full_model:
    return keras.saving.load_model(path, compile=False)
  classes = _classes_in_weights_file(path)
  application = getattr(keras.applications, KERAS_APPLICATIONS[name])
  model = application(weights=None, include_top=classes is not None, classes=classes or 1000,
                      classifier_activation=None)
  model.load_weights(path)
  return model


# The last layer of each application's backbone: what follows it is the classifier head.
BACKBONE_ENDS = {'xception': 'block14_sepconv2_act', 'inception_v3': 'mixed10',
                 'inception_resnet_v2': 'conv_7b_ac'}
_POOLS = {'GlobalAveragePooling2D': 'avg', 'GlobalMaxPooling2D': 'max'}
_HIDDEN_ACTIVATIONS = {'relu': 'relu', 'linear': None}


class KerasHead(NamedTuple):
  """A Keras classifier head as our model's options, and its Dense layers in order."""
  options: dict[str, Any]
  dense: list[Any]


def _no_counterpart(layer, why: str) -> ValueError:
  return ValueError(f'Keras layer {layer.name} ({type(layer).__name__}) has no counterpart in '
                    f'our classifier head: {why}.')


def read_head(layers: list[Any]) -> KerasHead:
  """The head made of `layers` (those after the backbone), as model options.

  Accepted: a global average or max pooling; Dense layers with ReLU or no
  activation (an Activation layer may supply it); one Dropout directly before
  the last Dense; a last Dense of any width, linear or softmax. Our head
  computes exactly this (`fc_layers`, `fc_activation`, `dropout_rate`,
  `num_classes`, `pooling`). Any other layer is a ValueError that names it.
  """
  pooling, dense, activations, dropout = None, [], [], None
  for layer in layers:
    kind = type(layer).__name__
    if kind == 'InputLayer':
      continue
    if kind in _POOLS:
      if pooling or dense:
        raise _no_counterpart(layer, 'the head pools once, before its Dense layers')
      pooling = _POOLS[kind]
    elif kind == 'Flatten' and pooling and not dense:
      continue  # A no-op on a globally pooled vector.
    elif kind == 'Dense':
      if pooling is None:
        raise _no_counterpart(layer, 'a Dense layer needs a global pooling before it')
      if dropout is not None and dropout[1] != len(dense):
        raise _no_counterpart(dropout[0], 'dropout is applied only before the last Dense layer')
      dense.append(layer)
      activations.append(layer.activation.__name__)
    elif kind == 'Activation' and dense and activations[-1] == 'linear':
      activations[-1] = layer.activation.__name__
    elif kind == 'Dropout' and dropout is None:
      dropout = (layer, len(dense))
    else:
      raise _no_counterpart(layer, 'expected global pooling, Dense, Dropout or Activation')
  if dropout is not None and dropout[1] != len(dense) - 1:
    raise _no_counterpart(dropout[0], 'dropout is applied only before the last Dense layer')
  if not dense:
    return KerasHead({'include_top': False, 'pooling': pooling}, [])
  hidden = activations[:-1]
  for layer, activation in zip(dense[:-1], hidden):
    if activation not in _HIDDEN_ACTIVATIONS or activation != hidden[0]:
      raise _no_counterpart(layer, f'hidden Dense layers share one activation, relu or linear '
                                   f'(this one: {activation})')
  if activations[-1] not in ('linear', 'softmax'):
    raise _no_counterpart(dense[-1], f'the last Dense layer is linear or softmax, not '
                                     f'{activations[-1]}')
  options = {'include_top': True, 'pooling': pooling,
             'num_classes': int(dense[-1].units),
             'fc_layers': tuple(int(layer.units) for layer in dense[:-1])}
  if hidden:
    options['fc_activation'] = _HIDDEN_ACTIVATIONS[hidden[0]]
  own_classifier = [layer.name for layer in layers] == ['avg_pool', 'predictions']
  if not own_classifier:  # An application's own classifier keeps the paper's dropout.
    options['dropout_rate'] = float(dropout[0].rate) if dropout else 0.0
  return KerasHead(options, dense)


def fixed_input_size(keras_model) -> Optional[int]:
  """The side of the Keras model's input when it is a fixed square, else None."""
  shape = tuple(keras_model.inputs[0].shape)
  return shape[1] if len(shape) == 4 and shape[1] is not None and shape[1] == shape[2] else None


def keras_to_ours(name: str, model_or_path: Any, **model_kwargs
                  ) -> tuple[nn.Module, dict[str, Any], Optional[int]]:
  """Our model for a Keras `name` model, its variables, and the Keras input size (or None).

  The Keras model is an application (`keras.applications.Xception`, ...), alone
  or as the backbone of a fine-tuned classifier: nested as a sub-model or
  inlined, followed by a head that `read_head` accepts. Our model gets the
  head's options (`num_classes`, `fc_layers`, `pooling`, ...); `model_kwargs`
  override them (`include_top=False` imports the backbone alone). Raises a
  ValueError naming every layer without a counterpart and every missing,
  unexpected or mis-shaped tensor.
  """
  if name not in _MAPPERS:
    raise ValueError(f'No Keras import for {name!r}; supported: {", ".join(sorted(_MAPPERS))}.')
  keras_model = load_keras_model(name, model_or_path)
  layers = list(_all_layers(keras_model))
  names = [layer.name for layer in layers]
  if BACKBONE_ENDS[name] not in names:
    raise ValueError(f'The Keras model has no layer {BACKBONE_ENDS[name]}: it is not built on '
                     f'keras.applications.{KERAS_APPLICATIONS[name]}.')
  end = names.index(BACKBONE_ENDS[name]) + 1
  head = read_head(layers[end:])
  options = {**head.options, **model_kwargs}
  if options['include_top'] and options.get('pooling', 'avg') is None:
    del options['pooling']  # A classifier asked of a headless model pools by default.
  model = models.create_model(name, **options)
  order, template = tree.layer_order(model)
  converted = _MAPPERS[name]([keras_layer(l) for l in layers[:end] if l.weights], order)
  flat = dict(converted.flat)
  head_paths = [f'fc{i + 1}' for i in range(len(head.dense) - 1)] + ['predictions']
  for layer, path in zip(head.dense if model.include_top else (), head_paths):
    _put(flat, ('head', path), keras_layer(layer))
  variables = tree.fill_variables(template, flat, f'Keras {name}', converted.origins,
                                  converted.unused)
  return model, variables, fixed_input_size(keras_model)


def from_keras(name: str, model_or_path: Any, **model_kwargs) -> dict[str, Any]:
  """Converts a Keras `name` model to `{'params', 'batch_stats'}` for our model.

  The returned tree fits `models.create_model(name, **options)` with the
  options of the Keras model's head (`keras_to_ours` returns that model):
  `num_classes`, `include_top` (False for a model without Dense layers),
  and for a fine-tuned head `fc_layers`, `fc_activation`, `pooling` and
  `dropout_rate`. Passing `include_top=False` for a model with a head imports
  the backbone only, as `from_timm` does. Raises a ValueError naming every
  layer without a counterpart and every missing, unexpected or mis-shaped tensor.
  """
  return keras_to_ours(name, model_or_path, **model_kwargs)[1]


def _put(flat, prefix: tree.Path, layer: KerasLayer) -> None:
  """Adds one Keras layer's variables under our module path `prefix`."""
  v = layer.variables
  if layer.kind == 'BatchNormalization':
    tree.batch_norm(flat, prefix, layer.norm())
  elif layer.kind == 'SeparableConv2D':
    depthwise = v['depthwise_kernel']  # (3, 3, C, 1) → ours (3, 3, 1, C).
    flat[('params', *prefix, 'depthwise', 'kernel')] = depthwise.transpose(0, 1, 3, 2)
    flat[('params', *prefix, 'pointwise', 'kernel')] = v['pointwise_kernel']
  elif layer.kind in ('Conv2D', 'Dense'):
    for key in ('kernel', 'bias'):
      if key in v:
        flat[('params', *prefix, key)] = v[key]
  else:
    raise ValueError(f'Keras layer {layer.name} of type {layer.kind} has no counterpart.')


@register_mapper('xception')
def _xception(layers: list[KerasLayer], order: Order) -> tree.Converted:
  # Keras leaves the four shortcut convs and their BNs unnamed (conv2d, conv2d_1, ...);
  # they belong, in model order, to the downsampling blocks.
  blocks = ('block2', 'block3', 'block4', 'block13')
  shortcuts = {'Conv2D': iter(blocks), 'BatchNormalization': iter(blocks)}
  flat: dict[tree.Path, np.ndarray] = {}
  for layer in layers:
    bn = layer.name.endswith('_bn')
    base = layer.name[:-3] if bn else layer.name
    if re.fullmatch(r'block1_conv\d', base):
      prefix = (base, 'bn' if bn else 'conv')
    elif re.fullmatch(r'block14_sepconv\d', base):
      prefix = (base, 'bn') if bn else (base,)
    elif m := re.fullmatch(r'(block\d+)_(sepconv\d)', base):
      prefix = (m[1], m[2], 'bn') if bn else (m[1], m[2])
    elif layer.kind in shortcuts and (block := next(shortcuts[layer.kind], None)):
      prefix = (block, 'shortcut', 'conv' if layer.kind == 'Conv2D' else 'bn')
    else:
      raise ValueError(f'Unexpected Keras layer {layer.name} in an Xception model.')
    _put(flat, prefix, layer)
  return tree.Converted(flat, {}, [])


_AUTO_NAME = re.compile(r'(conv2d|batch_normalization)(?:_(\d+))?')


def _auto_named(layers: list[KerasLayer], base: str) -> Iterator[KerasLayer]:
  """The layers Keras named itself `base`, `base_1`, `base_2`, ...: in creation order."""
  numbered = [(int(m[2] or 0), layer) for layer in layers
              if (m := _AUTO_NAME.fullmatch(layer.name)) and m[1] == base]
  return iter([layer for _, layer in sorted(numbered, key=lambda item: item[0])])


def _in_creation_order(layers: list[KerasLayer], order: Order,
                       named: Callable[[tree.Path, str], Optional[list[tuple[str, tree.Path]]]]
                       ) -> tree.Converted:
  """Pairs our layers, in call order, with Keras' layers, in creation order.

  `named(path, kind)` gives the Keras layers (name, our prefix) of a layer
  that Keras names; every other ConvBN takes the next unnamed conv and batch
  norm (`model.layers` is in graph order, not creation order, so the names'
  counters decide), and any other layer has no counterpart. Keras layers
  left over are reported as unused.
  """
  by_name = {layer.name: layer for layer in layers}
  convs, norms = _auto_named(layers, 'conv2d'), _auto_named(layers, 'batch_normalization')
  flat: dict[tree.Path, np.ndarray] = {}
  origins: dict[tree.Path, str] = {}
  used = set()
  for path, kind in order:
    pairs = named(path, kind)
    if pairs is None and kind == 'conv_bn':
      pairs = [(next(convs, None), path + ('conv',)), (next(norms, None), path + ('bn',))]
    elif pairs is not None:
      pairs = [(by_name.get(name), prefix) for name, prefix in pairs]
    for layer, prefix in pairs or ():
      if layer is None:
        continue
      placed = set(flat)
      _put(flat, prefix, layer)
      origins.update({p: f'Keras {layer.name}' for p in set(flat) - placed})
      used.add(layer.name)
  return tree.Converted(flat, origins, [f'Keras layer {layer.name}' for layer in layers
                                        if layer.name not in used])


@register_mapper('inception_v3')
def _inception_v3(layers: list[KerasLayer], order: Order) -> tree.Converted:
  return _in_creation_order(layers, order, lambda path, kind: None)


@register_mapper('inception_resnet_v2')
def _inception_resnet_v2(layers: list[KerasLayer], order: Order) -> tree.Converted:
  def named(path, kind):
    if kind == 'conv':  # The residual blocks' expansion convs: block35_1_conv, ...
      return [(f'{path[0]}_conv', path)]
    if path == ('conv_7b',):
      return [('conv_7b', path + ('conv',)), ('conv_7b_bn', path + ('bn',))]
    return None
  return _in_creation_order(layers, order, named)
