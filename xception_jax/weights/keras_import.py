"""Variables for our models from Keras `applications` models or their saved files.

Sources: a `keras.Model`; a `.keras` file; a full-model `.h5`; a weights-only
`.h5` (the format of the official Keras ImageNet weights) or `.weights.h5`,
loaded into a freshly built Keras application. Keras is imported lazily, so
using the models never needs it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

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
  """Decorator: `fn(layers, order) -> tree.Converted` converts Keras model `name`.

  `order` is our model's `tree.layer_order`, for sources whose layers pair by position.
  """
  def register(fn):
    _MAPPERS[name] = fn
    return fn
  return register


def _weighted_layers(model) -> Iterator[Any]:
  for layer in model.layers:
    if hasattr(layer, 'layers'):  # A nested model: its own layers, in order.
      yield from _weighted_layers(layer)
    elif layer.weights:
      yield layer


def keras_layers(model) -> list[KerasLayer]:
  """Every Keras layer that holds variables, in model order."""
  out = []
  for layer in _weighted_layers(model):
    variables = {w.path.split('/')[-1]: np.asarray(w.numpy()) for w in layer.weights}
    out.append(KerasLayer(layer.name, type(layer).__name__, variables))
  return out


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


def from_keras(name: str, model_or_path: Any, **model_kwargs) -> dict[str, Any]:
  """Converts a Keras `name` model to `{'params', 'batch_stats'}` for our model.

  The returned tree fits `models.create_model(name, num_classes=C,
  include_top=T, **model_kwargs)` where C and T are those of the Keras model
  (a model without the dense layer gives `include_top=False`; passing
  `include_top=False` for one with it imports the backbone only, as
  `from_timm` does). Raises a ValueError naming every missing, unexpected or
  mis-shaped tensor.
  """
  if name not in _MAPPERS:
    raise ValueError(f'No Keras import for {name!r}; supported: {", ".join(sorted(_MAPPERS))}.')
  layers = keras_layers(load_keras_model(name, model_or_path))
  head = [l for l in layers if l.kind == 'Dense' and l.name == 'predictions']
  model_kwargs.setdefault('include_top', bool(head))
  if head and not model_kwargs['include_top']:
    layers = [l for l in layers if l is not head[0]]
  elif head:
    model_kwargs.setdefault('num_classes', head[0].variables['kernel'].shape[-1])
  model = models.create_model(name, **model_kwargs)
  order, template = tree.layer_order(model)
  converted = _MAPPERS[name](layers, order)
  return tree.fill_variables(template, converted.flat, f'Keras {name}', converted.origins,
                             converted.unused)


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
    elif layer.name == 'predictions':
      prefix = ('head', 'predictions')
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


def _head(path: tree.Path, kind: str):
  return [('predictions', path)] if path == ('head', 'predictions') else None


@register_mapper('inception_v3')
def _inception_v3(layers: list[KerasLayer], order: Order) -> tree.Converted:
  return _in_creation_order(layers, order, _head)


@register_mapper('inception_resnet_v2')
def _inception_resnet_v2(layers: list[KerasLayer], order: Order) -> tree.Converted:
  def named(path, kind):
    if kind == 'conv':  # The residual blocks' expansion convs: block35_1_conv, ...
      return [(f'{path[0]}_conv', path)]
    if path == ('conv_7b',):
      return [('conv_7b', path + ('conv',)), ('conv_7b_bn', path + ('bn',))]
    return _head(path, kind)
  return _in_creation_order(layers, order, named)
