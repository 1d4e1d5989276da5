"""Convs in oneDNN's kernels on CPU: the 'onednn' form of the depthwise, 1×1 and k×k families.

XLA's CPU backend lowers a conv as patch packing plus a matrix product
(k×k), as shifted slices or a slow grouped kernel (depthwise); oneDNN, the
library under PyTorch's CPU convs, runs direct kernels. `conv` hands a conv
and both of its gradients to oneDNN through XLA's typed FFI
(`onednn_conv.cc`, compiled here at first use against the installed
`onednn-cpu-gomp` and `jax.ffi` headers, cached by content under
`~/.cache/xception_jax`). Each call splits its batch over XLA's own CPU
threads, so oneDNN and XLA never compete for the cores.

float32 on one CPU device only: the custom call has no sharding rule, so
under a multi-device mesh XLA would gather the batch around it.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from importlib import metadata, resources
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xception_jax.models.ops.windows import Pads, add_tuples, out_hw

SOURCE = 'onednn_conv.cc'
TARGETS = ('XjConvForward', 'XjConvBackwardData', 'XjConvBackwardWeights')
# The wheels that carry oneDNN's library (OpenMP build) and headers.
LIBRARY, HEADERS = 'onednn-cpu-gomp', 'onednn-devel-cpu-gomp'
INSTALL = f'pip install {LIBRARY}==2023.2.0 {HEADERS}==2023.2.0'


class OneDNNUnavailable(RuntimeError):
  """oneDNN's convs cannot be built or loaded here; the message says why and what to do."""


def cache_dir() -> str:
  """Where compiled libraries are kept: $XCEPTION_JAX_CACHE, else ~/.cache/xception_jax."""
  root = os.environ.get('XCEPTION_JAX_CACHE') or os.path.join(
      os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'xception_jax')
  return os.path.join(root, 'onednn')


def _installed_file(distribution: str, suffix: str) -> str:
  try:
    files = metadata.distribution(distribution).files or []
  except metadata.PackageNotFoundError:
    raise OneDNNUnavailable(f'oneDNN convs need the {distribution} package: {INSTALL}') from None
  for file in files:
    if str(file).endswith(suffix):
      return os.path.normpath(str(file.locate()))
  raise OneDNNUnavailable(f'{distribution} has no {suffix}; reinstall it: {INSTALL}')


def _compiler() -> str:
  compiler = os.environ.get('CXX') or shutil.which('c++') or shutil.which('g++')
  if not compiler:
    raise OneDNNUnavailable('oneDNN convs are compiled at first use and need a C++ compiler '
                            '(c++, g++ or $CXX); install one (e.g. apt-get install g++)')
  return compiler


@functools.lru_cache(maxsize=None)
def library_path() -> str:
  """The compiled FFI library, built now unless a build of the same inputs is cached.

  Raises OneDNNUnavailable (one line: what is missing and how to get it).
  """
  library = _installed_file(LIBRARY, 'libdnnl.so.3')
  headers = _installed_file(HEADERS, os.path.join('oneapi', 'dnnl', 'dnnl.hpp'))
  headers = os.path.dirname(os.path.dirname(os.path.dirname(headers)))
  source = resources.files(__package__).joinpath(SOURCE).read_bytes()
  compiler = _compiler()
  command = [compiler, '-O2', '-std=c++17', '-shared', '-fPIC', '-w',
             f'-I{jax.ffi.include_dir()}', f'-I{headers}', '-x', 'c++', '-', '-x', 'none',
             library, '-lgomp', f'-Wl,-rpath,{os.path.dirname(library)}']
  key = hashlib.sha256(b'\0'.join([source, jax.__version__.encode(),
                                   metadata.version(LIBRARY).encode(),
                                   ' '.join(command).encode()])).hexdigest()[:16]
  path = os.path.join(cache_dir(), f'xj_onednn_conv-{key}.so')
  if os.path.exists(path):
    return path
  # Built beside its final name and renamed into place: processes building at once never
  # load a half-written file.
  try:
    os.makedirs(cache_dir(), exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=cache_dir(), suffix='.so.partial')
  except OSError as error:
    raise OneDNNUnavailable(f'cannot write the oneDNN build cache ({error}); set '
                            'XCEPTION_JAX_CACHE to a writable directory') from None
  os.close(handle)
  logging.info('Compiling oneDNN convs into %s', path)
  try:
    try:
      result = subprocess.run([*command, '-o', partial], input=source, capture_output=True)
    except OSError as error:
      raise OneDNNUnavailable(f'cannot run the C++ compiler {compiler} ({error}); install one '
                              'or point $CXX at it') from None
    if result.returncode:
      errors = [line for line in result.stderr.decode(errors='replace').splitlines()
                if 'error' in line] or ['(no message)']
      raise OneDNNUnavailable(f'compiling oneDNN convs with {compiler} failed: {errors[0]}')
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return path


@functools.lru_cache(maxsize=None)
def _registered() -> None:
  try:
    library = ctypes.CDLL(library_path())
  except OSError as error:
    raise OneDNNUnavailable(f'loading oneDNN convs failed: {error}') from None
  for name in TARGETS:
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform='cpu')


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> Optional[str]:
  """None where oneDNN's convs build and load on this machine's CPU, else why not (one line).

  Decided once per process.
  """
  try:
    _registered()
  except OneDNNUnavailable as error:
    return str(error)
  return None


def require() -> None:
  """Raises OneDNNUnavailable unless oneDNN's convs can run here."""
  reason = unavailable_reason()
  if reason:
    raise OneDNNUnavailable(reason)


def supports(x: jnp.ndarray, kernel: jnp.ndarray, preferred_element_type=None) -> bool:
  """Whether `conv` computes this call: float32 NHWC input and HWIO kernel, float32 result."""
  return (x.ndim == kernel.ndim == 4 and x.dtype == kernel.dtype == jnp.float32
          and jnp.dtype(preferred_element_type or jnp.float32) == jnp.float32)


def conv(x: jnp.ndarray, kernel: jnp.ndarray, strides: Sequence[int], pads: Pads,
         groups: int = 1) -> jnp.ndarray:
  """NHWC `x` convolved with HWIO `kernel` (`groups` as XLA's feature_group_count).

  Equals `lax.conv_general_dilated` with the same arguments up to float
  rounding, both gradients included (not differentiable twice).
  """
  require()
  return _conv(x, kernel, tuple(map(int, strides)),
               tuple(tuple(map(int, p)) for p in pads), int(groups))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, strides, pads, groups):
  out = out_hw(add_tuples(x.shape[1:3], tuple(map(sum, pads))), kernel.shape[:2], strides)
  return _call('XjConvForward', (x.shape[0], *out, kernel.shape[-1]), x, kernel, strides, pads,
               groups)


def _conv_fwd(x, kernel, strides, pads, groups):
  return _conv(x, kernel, strides, pads, groups), (x, kernel)


def _conv_bwd(strides, pads, groups, residuals, dy):
  x, kernel = residuals
  dx = _call('XjConvBackwardData', x.shape, dy, kernel, strides, pads, groups)
  dkernel = _call('XjConvBackwardWeights', kernel.shape, x, dy, strides, pads, groups)
  return dx, dkernel


_conv.defvjp(_conv_fwd, _conv_bwd)


def _call(target, shape, a, b, strides, pads, groups):
  (pt, pb), (pl, pr) = pads
  attributes = dict(sh=strides[0], sw=strides[1], pt=pt, pb=pb, pl=pl, pr=pr, groups=groups)
  return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method='sequential')(
      a, b, **{name: np.int64(value) for name, value in attributes.items()})
