"""What the Inception family shares: branch specs, the multi-branch block, the model skeleton.

A block is a tuple of branches; a branch is a tuple of steps run in order on
the block input: `Conv` (conv → BN → ReLU), `Pool`, or `Split` (convs run in
parallel on the same input, concatenated: the expanded filter banks of
Inception-V3 Fig. 7). Widths are the references'; a model's width multiplier
scales them in one place. Conv modules are named `branch{i}_{j}` (j counts the
convs of branch i; the convs of a split get suffixes a, b), so call order,
creation order and the tables of the weight importers agree.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from xception_jax.models.execution import Execution
from xception_jax.models.layers import (Activation, ClassifierHead, ConvBN, ModuleDef, avg_pool,
                                        check_input_size, conv_and_norm_defs, global_pool,
                                        scaled_channels)
from xception_jax.models.ops.windows import stored_with_gradient


class Conv(NamedTuple):
  """conv (no bias) → BN → ReLU with `features` output channels at width multiplier 1."""
  features: int
  kernel: Union[int, tuple[int, int]]
  stride: int = 1
  padding: str = 'SAME'


class Pool(NamedTuple):
  """'max' or 'avg' pooling; SAME average pooling excludes padding unless the model says."""
  kind: str
  window: int = 3
  stride: int = 1
  padding: str = 'SAME'


class Split(NamedTuple):
  """Convs applied side by side to one input; their outputs are concatenated."""
  convs: tuple[Conv, ...]


Step = Union[Conv, Pool, Split]
Branch = tuple[Step, ...]


def conv_bn(spec: Conv, conv: ModuleDef, norm: ModuleDef, width_multiplier: float,
            name: str, before_norm: Optional[Callable] = None) -> ConvBN:
  """The ConvBN module for `spec`, its width scaled."""
  kernel = (spec.kernel, spec.kernel) if isinstance(spec.kernel, int) else spec.kernel
  return ConvBN(scaled_channels(spec.features, width_multiplier), kernel, conv, norm,
                strides=spec.stride, padding=spec.padding, before_norm=before_norm, name=name)


def pool(x: jnp.ndarray, spec: Pool, max_pool: Callable,
         count_include_pad: bool = False) -> jnp.ndarray:
  """The pooling `spec` asks for; max pooling by the injected `max_pool`."""
  if spec.kind == 'max':
    return max_pool(x, spec.window, spec.stride, spec.padding)
  return avg_pool(x, spec.window, spec.stride, spec.padding, count_include_pad)


def commutes_with_next(branch: Branch, k: int) -> bool:
  """Step k is a stride-1 average pool and step k + 1 a stride-1 1×1 conv: as both are
  linear (the conv has no bias, and a zero-padded border stays zero through it), the
  conv may run first and the pool on its output, which has fewer channels."""
  step, following = branch[k], branch[k + 1] if k + 1 < len(branch) else None
  return (isinstance(step, Pool) and step.kind == 'avg' and step.stride == 1
          and isinstance(following, Conv) and following.kernel in (1, (1, 1))
          and following.stride == 1)


class InceptionBlock(nn.Module):
  """Branches on one input, concatenated along channels; optionally a residual block.

  With `residual_scale` set it is an Inception-ResNet block (v4 paper §3.2):
  the concatenation goes through a linear 1×1 "filter expansion" conv (bias,
  no BN) back to the input width, is multiplied by `residual_scale`, added to
  the input, and passed through `activation` (None: the sum itself);
  `store_output` then stores it (Execution.residual == 'stored').
  """
  branches: Sequence[Branch]
  conv: ModuleDef
  norm: ModuleDef
  max_pool: Callable
  width_multiplier: float = 1.0
  count_include_pad: bool = False
  residual_scale: Optional[float] = None
  activation: Activation = nn.relu
  # Execution.avg_pool == 'after_pointwise': a branch's average pool runs after its 1×1 conv.
  avg_pool_after_pointwise: bool = False
  store_output: bool = False

  @nn.compact
  def __call__(self, x):
    layer = functools.partial(conv_bn, conv=self.conv, norm=self.norm,
                              width_multiplier=self.width_multiplier)
    outputs = []
    for i, branch in enumerate(self.branches):
      y, j, deferred_pool = x, 0, None
      for k, step in enumerate(branch):
        if isinstance(step, Pool):
          pool_step = functools.partial(pool, spec=step, max_pool=self.max_pool,
                                        count_include_pad=self.count_include_pad)
          if self.avg_pool_after_pointwise and commutes_with_next(branch, k):
            deferred_pool = pool_step
          else:
            y = pool_step(y)
          continue
        if isinstance(step, Split):
          y = jnp.concatenate([layer(s, name=f'branch{i}_{j}{"ab"[m]}')(y)
                               for m, s in enumerate(step.convs)], axis=-1)
        else:
          y = layer(step, name=f'branch{i}_{j}', before_norm=deferred_pool)(y)
          deferred_pool = None
        j += 1
      outputs.append(y)
    y = jnp.concatenate(outputs, axis=-1)
    if self.residual_scale is None:
      return y
    y = self.conv(x.shape[-1], (1, 1), use_bias=True, name='expansion')(y)
    y = x + self.residual_scale * y
    y = y if self.activation is None else self.activation(y)
    return stored_with_gradient(y) if self.store_output else y


class InceptionBase(nn.Module):
  """Options and call contract shared by the Inception models (not registered itself).

  A subclass implements `body(x, block, layer, max_pool, features, train)`: it runs the
  network to its last feature map, stores the named features, and returns
  the map. The call returns logits (float32) when `include_top`, otherwise
  the last map pooled by `pooling` ('avg', 'max' or None);
  `return_features=True` returns `(output, features)`. A subclass with an
  auxiliary classifier returns its logits from `auxiliary(features, conv,
  norm)`; they are computed only in training (and at init, so that their
  variables exist).
  """
  num_classes: int = 1000
  include_top: bool = True
  pooling: Optional[str] = 'avg'
  dropout_rate: float = 0.2                 # slim: dropout keep probability 0.8.
  fc_layers: Sequence[int] = ()             # FC layers before the classifier (Xception Fig. 8).
  fc_activation: Optional[str] = 'relu'     # Of the fc_layers; None: linear.
  width_multiplier: float = 1.0
  avg_pool_count_include_pad: bool = False  # True: PyTorch's default (timm inception_v3).
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  bn_scale: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  execution: Execution = Execution()        # How operations are computed, not what.

  min_input_size = 75
  tiny_options = {'width_multiplier': 0.25}  # Seconds-per-step variant (smoke runs).
  model_name = 'inception'
  feature_names = ()       # Named feature maps of `return_features`, shallow to deep ...
  feature_strides = ()     # ... and their strides in input pixels.

  def body(self, x, block, layer, max_pool, features, train: bool):
    raise NotImplementedError

  def auxiliary(self, features, conv, norm) -> Optional[jnp.ndarray]:
    """Auxiliary logits from the features, or None (no auxiliary classifier)."""
    return None

  @nn.compact
  def __call__(self, x, train: bool = False, return_features: bool = False):
    check_input_size(x, self.min_input_size, self.model_name)
    conv, norm = conv_and_norm_defs(
        train=train, dtype=self.dtype, param_dtype=self.param_dtype,
        bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, bn_scale=self.bn_scale,
        execution=self.execution)
    max_pool = self.execution.max_pool()
    forms = self.execution.resolved()
    block = functools.partial(
        self.execution.block(InceptionBlock), conv=conv, norm=norm, max_pool=max_pool,
        width_multiplier=self.width_multiplier, count_include_pad=self.avg_pool_count_include_pad,
        avg_pool_after_pointwise=forms.avg_pool == 'after_pointwise',
        store_output=forms.residual == 'stored')
    layer = functools.partial(conv_bn, conv=conv, norm=norm,
                              width_multiplier=self.width_multiplier)
    features = {}
    x = self.body(jnp.asarray(x, self.dtype), block, layer, max_pool, features, train)
    if not self.include_top:
      x = global_pool(x, self.pooling)
    else:
      aux = self.auxiliary(features, conv, norm) if train or self.is_initializing() else None
      x = ClassifierHead(self.num_classes, self.dropout_rate, self.fc_layers, self.pooling,
                         self.fc_activation, dtype=self.dtype, param_dtype=self.param_dtype,
                         name='head')(x, train)
      if aux is not None and train:
        x = (x, aux)
    return (x, features) if return_features else x


def run_stem(x, steps: Sequence[tuple[Optional[str], Step]], layer, max_pool: Callable,
             features: dict, record: Sequence[str] = ()):
  """Runs named `(name, Conv)` and unnamed `(None, Pool)` steps in order.

  The outputs of the convs named in `record` are stored in `features`.
  """
  for name, step in steps:
    if isinstance(step, Pool):
      x = pool(x, step, max_pool)
    else:
      x = layer(step, name=name)(x)
      if name in record:
        features[name] = x
  return x


REDUCE = Pool('max', 3, 2, 'VALID')   # The grid reduction pool of every Inception model.
AVG = Pool('avg', 3, 1, 'SAME')       # The pooling branch of the Inception modules.
VALID = 'VALID'

# Inception-V3's stem (Keras/slim), shared by Inception-ResNet-v1 and -v2; all but its
# last pool. Its five convs output at strides 2, 2, 2, 4, 4.
V3_STEM = (
    ('conv_1a', Conv(32, 3, 2, VALID)),
    ('conv_2a', Conv(32, 3, 1, VALID)),
    ('conv_2b', Conv(64, 3)),
    (None, REDUCE),
    ('conv_3b', Conv(80, 1, 1, VALID)),
    ('conv_4a', Conv(192, 3, 1, VALID)),
)


def reduction_a(k: int, l: int, m: int, n: int) -> tuple[Branch, ...]:
  """35×35 → 17×17 reduction of the v4 paper (Fig. 7, filter counts of its Table 1)."""
  return ((Conv(n, 3, 2, VALID),), (Conv(k, 1), Conv(l, 3), Conv(m, 3, 2, VALID)), (REDUCE,))


def per_stage(values: Sequence, option: str, model_name: str) -> tuple:
  """`values` as a tuple after checking it has one entry per stage (three)."""
  if len(values) != 3:
    raise ValueError(f'{model_name}: {option} needs one value per stage (3), got {values!r}.')
  return tuple(values)


def residual_stages(x, block, stages, scales: Sequence[float], features: dict,
                    last_linear: bool = False):
  """Inception-ResNet stages: `stages` lists (name, branches, repeats, reduction or None).

  Block i of stage `name` is named `{name}_{i}` (Keras' names); the stage's
  output is stored as feature `name`. The reduction after a stage is named by
  its tuple's first element. `last_linear`: the network's very last block has
  scale 1.0 and no ReLU (Inception-ResNet-v2, as every reference has it).
  """
  for stage, ((name, branches, repeats, reduction), scale) in enumerate(zip(stages, scales)):
    for i in range(repeats):
      final = last_linear and stage == len(stages) - 1 and i == repeats - 1
      x = block(branches, residual_scale=1.0 if final else scale,
                activation=None if final else nn.relu, name=f'{name}_{i + 1}')(x)
    features[name] = x
    if reduction is not None:
      x = block(reduction[1], name=reduction[0])(x)
  return x
