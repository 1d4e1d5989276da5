"""How a model's operations are computed: one value beside its architecture.

`Execution` names a form for each operation family whose XLA kernel is slow
on some backend (see `ops/`), and whether blocks are rematerialised. It never
changes a model's parameters or, beyond float rounding, its results: a model
built with `Execution.reference()` (XLA's own operations throughout) and one
built with the defaults read the same checkpoints and compute the same
function. Models receive it as one field, `execution`, and inject what it
resolves to (the conv function, the norm layer, the max pool, the remat
wrapper) into their layers like any other module definition.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax

from xception_jax.models.ops import batch_norm, convs, onednn, pooling

# The forms of each family; the first is XLA's own operation, the reference.
FORMS = {'depthwise': ('xla', 'shifted', 'onednn'),
         'pointwise': ('xla', 'dot', 'onednn'),
         'conv': ('xla', 'im2col', 'onednn'),
         'pool': ('xla', 'shifted'),
         'avg_pool': ('xla', 'after_pointwise'),
         'norm': ('xla', 'fused'),
         'residual': ('xla', 'stored')}

# What 'auto' picks per backend (measured: docs/performance.md). CPU: every
# fast form but im2col, which XLA's own convs beat under `compiler_options()`.
# GPU: cuDNN's convs, grouped ones included, and the fused batch norm. TPU and
# anything unmeasured: XLA's forms.
AUTO = {'cpu': {'depthwise': 'shifted', 'pointwise': 'dot', 'pool': 'shifted',
                'avg_pool': 'after_pointwise', 'norm': 'fused', 'residual': 'stored'},
        'gpu': {'norm': 'fused'}}
# On a process with one CPU device where oneDNN's convs build and load, 'auto'
# picks them for every conv family instead (faster than all of the above).
AUTO_ONEDNN = {'depthwise': 'onednn', 'pointwise': 'onednn', 'conv': 'onednn'}

# The fields models had before `execution` existed, still accepted by `create_model`.
LEGACY_OPTIONS = {'depthwise_impl': 'depthwise', 'pointwise_impl': 'pointwise',
                  'conv_impl': 'conv', 'pool_impl': 'pool', 'norm_impl': 'norm',
                  'remat': 'remat'}


@dataclasses.dataclass(frozen=True)
class Execution:
  """The form of each operation family ('auto': per backend, `AUTO`) and rematerialisation.

  depthwise  'xla': grouped `lax.conv_general_dilated`; 'shifted': summed shifted slices.
  pointwise  'xla': 1×1 `lax.conv_general_dilated`; 'dot': one matrix product.
  conv       other convs. 'xla'; 'im2col': one matrix product over the input's patches.
             Each of these three also 'onednn': oneDNN's kernels (`ops.onednn`; CPU,
             float32, one device; other calls go to XLA).
  pool       max pooling. 'xla': `nn.max_pool`; 'shifted': maximum of shifted windows.
  avg_pool   an Inception branch's 3×3 average pool and the 1×1 conv after it. 'xla': the
             pool, then the conv; 'after_pointwise': the conv, then the pool over its fewer
             channels (both are linear and the conv has no bias: the same values).
  norm       batch norm. 'xla': `nn.BatchNorm`; 'fused': `ops.batch_norm.FusedBatchNorm`.
  residual   an Inception-ResNet block's output (the residual sum and its ReLU). 'xla':
             left to XLA, whose CPU fusion recomputes all earlier blocks' sums inside each
             later one; 'stored': stored once, its gradient too
             (`ops.windows.stored_with_gradient`).
  remat      recompute each block's activations in the backward pass (less memory).
  """
  depthwise: str = 'auto'
  pointwise: str = 'auto'
  conv: str = 'auto'
  pool: str = 'auto'
  avg_pool: str = 'auto'
  norm: str = 'auto'
  residual: str = 'auto'
  remat: bool = False

  def __post_init__(self):
    for family, forms in FORMS.items():
      value = getattr(self, family)
      if value not in ('auto', *forms):
        raise ValueError(f'Unknown {family} form {value!r}; choose one of '
                         f'{", ".join(repr(f) for f in ("auto", *forms))}.')
    if not isinstance(self.remat, bool):
      raise ValueError(f'remat must be True or False, got {self.remat!r}.')

  @classmethod
  def reference(cls, remat: bool = False) -> 'Execution':
    """XLA's own operation for every family: what the fast forms are tested against."""
    return cls(**{family: forms[0] for family, forms in FORMS.items()}, remat=remat)

  @classmethod
  def of(cls, value: 'Execution | Mapping[str, Any] | None') -> 'Execution':
    """`value` itself, or an Execution from a mapping of its fields (a config entry)."""
    if value is None:
      return cls()
    if isinstance(value, cls):
      return value
    value = value.to_dict() if hasattr(value, 'to_dict') else dict(value)   # A ConfigDict.
    unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f'execution has no field(s) {", ".join(unknown)}; valid: '
                       f'{", ".join(f.name for f in dataclasses.fields(cls))}.')
    return cls(**value)

  def replace(self, **changes) -> 'Execution':
    return dataclasses.replace(self, **changes)

  def resolved(self, backend: Optional[str] = None) -> 'Execution':
    """The same value with every 'auto' replaced by the form `AUTO` picks on `backend`.

    `backend` defaults to JAX's default backend.
    """
    backend = backend or jax.default_backend()
    auto = AUTO.get(backend, {})
    if (backend == 'cpu' and jax.local_device_count() == 1
        and any(getattr(self, family) == 'auto' for family in AUTO_ONEDNN)):
      reason = onednn.unavailable_reason()
      if reason:
        _warn_once(f"'auto' convs use XLA's forms, not oneDNN's: {reason}")
      else:
        auto = dict(auto, **AUTO_ONEDNN)
    resolved = self.replace(**{family: auto.get(family, FORMS[family][0])
                               for family in FORMS if getattr(self, family) == 'auto'})
    if 'onednn' in (resolved.depthwise, resolved.pointwise, resolved.conv):
      if backend != 'cpu':
        raise ValueError(f"The 'onednn' conv form runs on CPU only, not {backend}; use 'auto'.")
      onednn.require()
    return resolved

  def conv_general_dilated(self) -> Callable:
    """The `lax.conv_general_dilated` replacement for `nn.Conv(conv_general_dilated=...)`."""
    r = self.resolved()
    if (r.depthwise, r.pointwise) == ('shifted', 'dot') and jax.default_backend() == 'gpu':
      _warn_once("depthwise='shifted' with pointwise='dot' made XLA's GPU compiler abort on "
                 "whole models (jax 0.11.2, H200); on a GPU leave them 'auto'.")
    return convs.conv_general_dilated_fn(r.depthwise, r.pointwise, r.conv)

  def norm_layer(self) -> type[nn.Module]:
    """The batch-norm module: nn.BatchNorm or FusedBatchNorm (the same variables)."""
    return batch_norm.FusedBatchNorm if self.resolved().norm == 'fused' else nn.BatchNorm

  def max_pool(self) -> Callable:
    """`max_pool(x, window, stride, padding)` for square windows, in this value's form."""
    return functools.partial(_max_pool, form=self.resolved().pool)

  def block(self, module: type[nn.Module]) -> type[nn.Module]:
    """`module`, or with `remat` its `nn.remat` version: same parameters, less memory."""
    return nn.remat(module) if self.remat else module


def _max_pool(x, window: int, stride: int, padding: Any = 'SAME', *, form: str):
  if form == 'shifted':
    return pooling.shifted_max_pool(x, (window, window), (stride, stride), padding)
  return nn.max_pool(x, (window, window), (stride, stride), padding)


def split_legacy_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
  """`options` with the old per-operation fields (`depthwise_impl`, `remat`, ...) folded
  into `execution`, each named in one DeprecationWarning."""
  legacy = {key: options.pop(key) for key in list(options) if key in LEGACY_OPTIONS}
  if not legacy:
    return options
  replacement = ', '.join(f'{LEGACY_OPTIONS[k]}={v!r}' for k, v in legacy.items())
  warnings.warn(f'{name}: {", ".join(sorted(legacy))} are deprecated; pass '
                f'execution=Execution({replacement}) instead.', DeprecationWarning, stacklevel=3)
  current = Execution.of(options.get('execution'))
  options['execution'] = current.replace(**{LEGACY_OPTIONS[k]: v for k, v in legacy.items()})
  return options


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
  logging.warning(message)
