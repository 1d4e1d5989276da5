"""Variables for our models from timm (PyTorch) checkpoints, without importing torch.

timm's models differ from the Keras ones in ways that change outputs, so a
checkpoint goes with a model configured like its source: `timm_model(name)`
builds it (see TIMM_OPTIONS), `from_timm(name, checkpoint)` converts the
weights. Sources: a `.safetensors` file (timm's hub format, read with
`safetensors.numpy`) or a mapping of arrays (numpy, or anything `np.asarray`
accepts, such as a CPU `state_dict()`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import numpy as np

from xception_jax import models
from xception_jax.weights import tree

# Our name → timm's model name, and the options under which our model computes what timm's does.
TIMM_NAMES = {'xception': 'legacy_xception', 'inception_v3': 'inception_v3',
              'inception_v4': 'inception_v4', 'inception_resnet_v2': 'inception_resnet_v2'}
TIMM_OPTIONS: dict[str, dict[str, Any]] = {
    # A port of the Keras weights, but PyTorch's BN eps (1e-5) and symmetric pool padding.
    'xception': dict(bn_epsilon=1e-5, pool_padding='symmetric'),
    # BN with scale; PyTorch's avg_pool2d counts padding.
    'inception_v3': dict(bn_scale=True, avg_pool_count_include_pad=True),
    'inception_v4': dict(bn_scale=True),
    'inception_resnet_v2': dict(bn_scale=True),
}

# A source layer: (kind, timm module prefixes). 'conv_bn' and 'sep_bn' name the conv and
# its batch norm; 'conv' and 'dense' name one module with weight and bias.
Entry = tuple[str, tuple[str, ...]]


def timm_model(name: str, **kwargs):
  """`models.create_model(name, ...)` configured to compute what timm's model computes.

  `kwargs` override (e.g. `num_classes`, `include_top`, `dtype`); the options
  that make outputs equal timm's are in TIMM_OPTIONS.
  """
  if name not in TIMM_OPTIONS:
    raise ValueError(f'No timm import for {name!r}; supported: {", ".join(sorted(TIMM_OPTIONS))}.')
  return models.create_model(name, **{**TIMM_OPTIONS[name], **kwargs})


def read_state_dict(state_dict_or_path: Union[str, os.PathLike, Mapping[str, Any]]
                    ) -> dict[str, np.ndarray]:
  """timm tensors by name as numpy arrays, without BN's `num_batches_tracked` counters."""
  if isinstance(state_dict_or_path, (str, os.PathLike)):
    path = Path(os.fspath(state_dict_or_path))
    if not path.is_file():
      raise FileNotFoundError(f'No timm checkpoint at {path}.')
    if path.suffix != '.safetensors':
      raise ValueError(f'{path}: expected a .safetensors file; for a torch checkpoint pass '
                       '{name: tensor.numpy()} of its state dict instead.')
    from safetensors.numpy import load_file
    state = load_file(path)
  else:
    state = {key: np.asarray(value) for key, value in state_dict_or_path.items()}
  return {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}


def _conv_kernel(weight: np.ndarray) -> np.ndarray:
  return weight.transpose(2, 3, 1, 0)  # (out, in/groups, h, w) → (h, w, in/groups, out).


def _convert(kind: str, prefixes: tuple[str, ...], path: tree.Path) -> list[tuple[tree.Path, str,
                                                                               Callable]]:
  """(our variable path, timm key, conversion) for one layer."""
  same = lambda a: a
  if kind in ('conv', 'dense'):
    kernel = _conv_kernel if kind == 'conv' else np.transpose
    return [(('params', *path, 'kernel'), f'{prefixes[0]}.weight', kernel),
            (('params', *path, 'bias'), f'{prefixes[0]}.bias', same)]
  weights, bn = prefixes
  if kind == 'conv_bn':
    out = [(('params', *path, 'conv', 'kernel'), f'{weights}.weight', _conv_kernel)]
  else:  # sep_bn: timm's SeparableConv2d holds conv1 (depthwise) and pointwise.
    out = [(('params', *path, 'depthwise', 'kernel'), f'{weights}.conv1.weight', _conv_kernel),
           (('params', *path, 'pointwise', 'kernel'), f'{weights}.pointwise.weight',
            _conv_kernel)]
  norm = (('params', 'scale', 'weight'), ('params', 'bias', 'bias'),
          ('batch_stats', 'mean', 'running_mean'), ('batch_stats', 'var', 'running_var'))
  return out + [((collection, *path, 'bn', ours), f'{bn}.{theirs}', same)
                for collection, ours, theirs in norm]


def tensor_table(name: str, model) -> list[tuple[tree.Path, str, Callable]]:
  """(our variable path, timm tensor name, conversion to ours) for every variable of `model`.

  `model` is our `name` model configured as `timm_model(name, ...)`; the
  conversion turns timm's array (PyTorch layout) into ours.
  """
  order, _ = tree.layer_order(model)
  entries = _LAYOUTS[name][1](model)
  table = []
  for (path, kind), (source_kind, prefixes) in zip(order, entries):
    if source_kind != kind:
      raise ValueError(f'Cannot load timm {TIMM_NAMES[name]} into the model: '
                       f'{"/".join(path)} is a {kind} layer but timm has a {source_kind} '
                       f'layer {", ".join(prefixes)} in its place.')
    table += _convert(kind, prefixes, path)
  return table


def timm_to_ours(name: str, state_dict_or_path: Union[str, os.PathLike, Mapping[str, Any]],
                 **model_kwargs) -> tuple[Any, dict[str, Any]]:
  """Our model for timm `TIMM_NAMES[name]` weights and its variables (see `from_timm`)."""
  if name not in _LAYOUTS:
    raise ValueError(f'No timm import for {name!r}; supported: {", ".join(sorted(_LAYOUTS))}.')
  state = read_state_dict(state_dict_or_path)
  classifier, _ = _LAYOUTS[name]
  model_kwargs.setdefault('include_top', f'{classifier}.weight' in state)
  if model_kwargs['include_top'] and f'{classifier}.weight' in state:
    model_kwargs.setdefault('num_classes', state[f'{classifier}.weight'].shape[0])
  skipped = () if model_kwargs['include_top'] else (f'{classifier}.', 'AuxLogits.')
  if not model_kwargs.get('aux_logits', False):
    skipped += ('AuxLogits.',)
  state = {k: v for k, v in state.items() if not k.startswith(skipped)}
  model = timm_model(name, **model_kwargs)
  _, template = tree.layer_order(model)
  flat: dict[tree.Path, np.ndarray] = {}
  origins: dict[tree.Path, str] = {}
  for ours, key, convert in tensor_table(name, model):
    origins[ours] = f'timm {key}'
    if key in state:
      flat[ours] = convert(state[key])
  used = {origins[path][len('timm '):] for path in flat}
  unused = [f'timm {key}' for key in state if key not in used]
  return model, tree.fill_variables(template, flat, f'timm {TIMM_NAMES[name]}', origins, unused)


def from_timm(name: str, state_dict_or_path: Union[str, os.PathLike, Mapping[str, Any]],
              **model_kwargs) -> dict[str, Any]:
  """Converts timm `TIMM_NAMES[name]` weights to `{'params', 'batch_stats'}` for our model.

  The returned tree fits `timm_model(name, num_classes=C, include_top=T,
  **model_kwargs)`, C and T read from the checkpoint's classifier (none gives
  `include_top=False`; any number of classes, e.g. a fine-tuned model's); an
  explicit `include_top=False` skips the classifier. For inception_v3 the
  auxiliary classifier (`AuxLogits.*`, in timm's `tv_in1k` weights) is
  imported with `aux_logits=True` and otherwise skipped, as timm does. Raises
  a ValueError naming every missing, unexpected or mis-shaped tensor with its
  timm name.
  """
  return timm_to_ours(name, state_dict_or_path, **model_kwargs)[1]


def _conv_bn(*modules: str) -> list[Entry]:
  """Entries for timm ConvNormAct modules (`.conv`, `.bn`)."""
  return [('conv_bn', (f'{m}.conv', f'{m}.bn')) for m in modules]


def _block(prefix: str, names: str) -> list[Entry]:
  return _conv_bn(*(f'{prefix}.{n}' for n in names.split()))


def _head(model, classifier: str) -> list[Entry]:
  return [('dense', (classifier,))] if model.include_top else []


def _xception(model) -> list[Entry]:
  # timm numbers Keras' blocks 2–13 as 1–12. Its block1 has no leading ReLU, so its
  # separable convs and BNs sit at rep.0/1, 3/4; elsewhere at rep.1/2, 4/5, 7/8.
  entries = [('conv_bn', ('conv1', 'bn1')), ('conv_bn', ('conv2', 'bn2'))]
  for block in range(1, 13):
    first, count = (0, 2) if block == 1 else (1, 3 if 4 <= block <= 11 else 2)
    entries += [('sep_bn', (f'block{block}.rep.{first + 3 * i}',
                            f'block{block}.rep.{first + 3 * i + 1}')) for i in range(count)]
    if not 4 <= block <= 11:
      entries.append(('conv_bn', (f'block{block}.skip', f'block{block}.skipbn')))
  return entries + [('sep_bn', ('conv3', 'bn3')), ('sep_bn', ('conv4', 'bn4'))] + \
      _head(model, 'fc')


_V3_35 = ('branch1x1 branch5x5_1 branch5x5_2 branch3x3dbl_1 branch3x3dbl_2 branch3x3dbl_3 '
          'branch_pool')
_V3_17 = ('branch1x1 branch7x7_1 branch7x7_2 branch7x7_3 branch7x7dbl_1 branch7x7dbl_2 '
          'branch7x7dbl_3 branch7x7dbl_4 branch7x7dbl_5 branch_pool')
_V3_8 = ('branch1x1 branch3x3_1 branch3x3_2a branch3x3_2b branch3x3dbl_1 branch3x3dbl_2 '
         'branch3x3dbl_3a branch3x3dbl_3b branch_pool')


def _inception_v3(model) -> list[Entry]:
  entries = _conv_bn('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'Conv2d_3b_1x1',
                     'Conv2d_4a_3x3')
  for block in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d'):
    entries += _block(block, _V3_35)
  entries += _block('Mixed_6a', 'branch3x3 branch3x3dbl_1 branch3x3dbl_2 branch3x3dbl_3')
  for block in ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e'):
    entries += _block(block, _V3_17)
  entries += _block('Mixed_7a', 'branch3x3_1 branch3x3_2 branch7x7x3_1 branch7x7x3_2 '
                                'branch7x7x3_3 branch7x7x3_4')
  entries += _block('Mixed_7b', _V3_8) + _block('Mixed_7c', _V3_8)
  if model.aux_logits and model.include_top:  # Our auxiliary head runs after the tower.
    entries += _conv_bn('AuxLogits.conv0', 'AuxLogits.conv1') + [('dense', ('AuxLogits.fc',))]
  return entries + _head(model, 'fc')


_V4_A = 'branch0 branch1.0 branch1.1 branch2.0 branch2.1 branch2.2 branch3.1'
_V4_B = ('branch0 branch1.0 branch1.1 branch1.2 branch2.0 branch2.1 branch2.2 branch2.3 '
         'branch2.4 branch3.1')
_V4_C = ('branch0 branch1_0 branch1_1a branch1_1b branch2_0 branch2_1 branch2_2 branch2_3a '
         'branch2_3b branch3.1')


def _inception_v4(model) -> list[Entry]:
  # timm's `features` Sequential: 0–2 stem convs, 3 mixed_3a, 4 mixed_4a, 5 mixed_5a,
  # 6–9 Inception-A, 10 Reduction-A, 11–17 Inception-B, 18 Reduction-B, 19–21 Inception-C.
  entries = _conv_bn('features.0', 'features.1', 'features.2', 'features.3.conv')
  entries += _block('features.4', 'branch0.0 branch0.1 branch1.0 branch1.1 branch1.2 branch1.3')
  entries += _conv_bn('features.5.conv')
  for i in range(6, 10):
    entries += _block(f'features.{i}', _V4_A)
  entries += _block('features.10', 'branch0 branch1.0 branch1.1 branch1.2')
  for i in range(11, 18):
    entries += _block(f'features.{i}', _V4_B)
  entries += _block('features.18', 'branch0.0 branch0.1 branch1.0 branch1.1 branch1.2 branch1.3')
  for i in range(19, 22):
    entries += _block(f'features.{i}', _V4_C)
  return entries + _head(model, 'last_linear')


def _inception_resnet_v2(model) -> list[Entry]:
  entries = _conv_bn('conv2d_1a', 'conv2d_2a', 'conv2d_2b', 'conv2d_3b', 'conv2d_4a')
  entries += _block('mixed_5b', _V4_A)  # Same branch layout as Inception-v4's A module.
  residual = lambda prefix, names: _block(prefix, names) + [('conv', (f'{prefix}.conv2d',))]
  for i in range(10):
    entries += residual(f'repeat.{i}', 'branch0 branch1.0 branch1.1 branch2.0 branch2.1 '
                                       'branch2.2')
  entries += _block('mixed_6a', 'branch0 branch1.0 branch1.1 branch1.2')
  for i in range(20):
    entries += residual(f'repeat_1.{i}', 'branch0 branch1.0 branch1.1 branch1.2')
  entries += _block('mixed_7a', 'branch0.0 branch0.1 branch1.0 branch1.1 branch2.0 branch2.1 '
                                'branch2.2')
  for prefix in [f'repeat_2.{i}' for i in range(9)] + ['block8']:
    entries += residual(prefix, 'branch0 branch1.0 branch1.1 branch1.2')
  return entries + _conv_bn('conv2d_7b') + _head(model, 'classif')


# Our name → (timm's classifier module, the timm layers in our call order).
_LAYOUTS: dict[str, tuple[str, Callable[[Any], list[Entry]]]] = {
    'xception': ('fc', _xception),
    'inception_v3': ('fc', _inception_v3),
    'inception_v4': ('last_linear', _inception_v4),
    'inception_resnet_v2': ('classif', _inception_resnet_v2),
}
