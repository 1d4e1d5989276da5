"""XLA compiler options for jitting these models, per backend and model.

Every jitted step here (training, evaluation, prediction, benchmarks) passes
`compiler_options(model=model)`; code that jits the models itself should too.
Why each option is set, with its measurements: docs/performance.md.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Optional

import jax
import jax.numpy as jnp

from xception_jax.models import registry

# CPU: keep k×k convs out of YNNPACK (its conv gradients ran 1.3-4.7× slower
# than XLA's own) and schedule for memory (faster and smaller for these
# models). `xla_cpu_scheduler_type`, because XLA ignores the older
# `xla_cpu_enable_concurrency_optimized_scheduler` as a compiler option.
COMPILER_OPTIONS = {'cpu': {
    'xla_cpu_experimental_ynn_fusion_type':
        'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE',
    'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}}
# Per backend and registered model name, options that replace those above:
# Inception-ResNet-v2 gains from YNNPACK's fused elementwise work and from the
# concurrency-optimised scheduler, which slow the other models.
MODEL_COMPILER_OPTIONS = {'cpu': {'inception_resnet_v2': {
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE',
    'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED'}}}
# Programs that run once, such as a state's initialisation, are not worth optimising on
# CPU: LLVM's optimisation costs more compile time than it saves in the one run
# (docs/performance.md). The values are the same to the bit for these models' initialisers
# (Glorot-uniform kernels and constants; normal-distributed ones can differ in the last bit).
RUN_ONCE_COMPILER_OPTIONS = {'cpu': {'xla_backend_optimization_level': 0}}


def run_once_compiler_options(backend: Optional[str] = None) -> dict[str, Any]:
  """XLA compiler options for a program that runs once (initialising a state): code
  generated cheaply, the same results."""
  return dict(RUN_ONCE_COMPILER_OPTIONS.get(backend or jax.default_backend(), {}))


def compiler_options(backend: Optional[str] = None, *,
                     model: Any = None) -> dict[str, Any]:
  """XLA compiler options for jitting `model` (a registry name or module) on `backend`.

  `backend` defaults to JAX's default. Pass them as
  `jax.jit(..., compiler_options=models.compiler_options(model=model))`. Without
  `model`, the options common to every model. Options that this XLA does not
  know (they are experimental) are left out, with a warning, rather than
  failing the compile.
  """
  name = model if isinstance(model, str) or model is None else registry.model_name(model)
  return dict(_checked_options(backend or jax.default_backend(), name))


@functools.lru_cache(maxsize=None)
def _checked_options(backend: str, model_name: Optional[str]) -> dict[str, Any]:
  options = dict(COMPILER_OPTIONS.get(backend, {}),
                 **MODEL_COMPILER_OPTIONS.get(backend, {}).get(model_name, {}))
  return {name: value for name, value in options.items()
          if _accepted(backend, name, value)}


def check_options(options: dict[str, Any], backend: Optional[str] = None) -> None:
  """Raises a one-line ValueError for the first option XLA on `backend` rejects."""
  for name, value in options.items():
    problem = _rejection(backend or jax.default_backend(), name, value)
    if problem:
      raise ValueError(f'XLA rejects the compiler option {name}={value!r} ({problem}); '
                       'remove it from compiler_options or correct it.')


def _accepted(backend: str, name: str, value: Any) -> bool:
  """Whether XLA on `backend` compiles with the option; a warning if not."""
  problem = _rejection(backend, name, value)
  if problem:
    logging.warning('XLA rejected the compiler option %s=%r (%s); compiling without it.',
                    name, value, problem)
  return not problem


@functools.lru_cache(maxsize=None)
def _rejection(backend: str, name: str, value: Any) -> str:
  """XLA's one-line error for compiling with the option on `backend`, '' if it compiles."""
  try:
    jax.jit(lambda x: x + 1, backend=backend, compiler_options={name: value}).lower(
        jnp.zeros(())).compile()
  except Exception as e:   # The XLA error type differs between versions.
    return str(e).splitlines()[0]
  return ''
