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

KERAS_APPLICATIONS = {'xception': 'Xception'}
_MAPPERS: dict[str, Callable[[list['KerasLayer']], dict[tree.Path, np.ndarray]]] = {}


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
  """Decorator: `fn(layers) -> {flax path: array}` converts Keras model `name`."""
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
  (a model without the dense layer gives `include_top=False`). Raises a
  ValueError naming every missing, unexpected or mis-shaped tensor.
  """
  if name not in _MAPPERS:
    raise ValueError(f'No Keras import for {name!r}; supported: {", ".join(sorted(_MAPPERS))}.')
  layers = keras_layers(load_keras_model(name, model_or_path))
  flat = _MAPPERS[name](layers)
  head = [l for l in layers if l.kind == 'Dense' and l.name == 'predictions']
  model_kwargs.setdefault('include_top', bool(head))
  if head:
    model_kwargs.setdefault('num_classes', head[0].variables['kernel'].shape[-1])
  model = models.create_model(name, **model_kwargs)
  return tree.fill_variables(tree.variable_template(model, model.min_input_size), flat,
                             source=f'Keras {name}')


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
def _xception(layers: list[KerasLayer]) -> dict[tree.Path, np.ndarray]:
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
  return flat
