"""One registry of model constructors: `create_model(name, **kwargs)`, `list_models()`."""
from __future__ import annotations

import ast
import dataclasses
from typing import Any, Callable, Optional, Sequence, TypeVar

import flax.linen as nn

from xception_jax.models.execution import Execution, split_legacy_options

_MODELS: dict[str, type[nn.Module]] = {}
ModelClass = TypeVar('ModelClass', bound=type)


def register_model(name: str) -> Callable[[ModelClass], ModelClass]:
  """Class decorator that makes a Flax model available as `create_model(name)`."""
  def register(cls: ModelClass) -> ModelClass:
    if name in _MODELS:
      raise ValueError(f'A model named {name!r} is already registered.')
    _MODELS[name] = cls
    return cls
  return register


def list_models() -> list[str]:
  """Names accepted by `create_model`, sorted."""
  return sorted(_MODELS)


def model_class(name: str) -> type[nn.Module]:
  """The registered class for `name`; a ValueError listing the choices otherwise."""
  if name not in _MODELS:
    raise ValueError(f'Unknown model {name!r}; available: {", ".join(list_models())}.')
  return _MODELS[name]


def model_name(model: Any) -> Optional[str]:
  """The registered name of a model instance or class (its nearest registered class); else None."""
  cls = model if isinstance(model, type) else type(model)
  names = {registered: name for name, registered in _MODELS.items()}
  return next((names[c] for c in cls.__mro__ if c in names), None)


# Attributes set from elsewhere than a model's options: the data (num_classes), the
# config's dtype and execution fields, and Flax's own.
NOT_OPTIONS = ('parent', 'name', 'num_classes', 'dtype', 'param_dtype', 'execution')


def model_options(name: str) -> dict[str, Any]:
  """The architecture options of model `name` (what `model_kwargs` may set) and their defaults."""
  return {f.name: f.default for f in dataclasses.fields(model_class(name))
          if f.name not in NOT_OPTIONS}


def model_config(model: nn.Module) -> tuple[str, dict[str, Any]]:
  """(registered name, options) that rebuild `model`'s architecture with `create_model`.

  Options are `num_classes` and every architecture option whose value differs
  from its default; how operations are computed (`dtype`, `execution`) is
  not part of it.
  """
  name = model_name(model)
  if name is None:
    raise ValueError(f'{type(model).__name__} is not a registered model.')
  options = {'num_classes': model.num_classes}
  options.update({key: getattr(model, key) for key, default in model_options(name).items()
                  if getattr(model, key) != default})
  return name, options


def options_from_json(options: dict[str, Any]) -> dict[str, Any]:
  """Options read back from JSON: lists become the tuples the models' fields hold."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def create_model(name: str, **kwargs) -> nn.Module:
  """Builds the model `name` with its attributes overridden by `kwargs`.

  `execution` may be an `Execution` or a mapping of its fields (a config
  entry); the older per-operation options (`depthwise_impl`, ..., `remat`) are
  folded into it with a DeprecationWarning. Unknown keyword arguments raise a
  ValueError naming them and the valid ones.
  """
  cls = model_class(name)
  kwargs = split_legacy_options(name, dict(kwargs))
  if 'execution' in kwargs:
    kwargs['execution'] = Execution.of(kwargs['execution'])
  fields = {f.name for f in dataclasses.fields(cls)} - {'parent', 'name'}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f'{name} has no option(s) {", ".join(unknown)}; '
                     f'valid options: {", ".join(sorted(fields))}.')
  return cls(**kwargs)


def parse_options(assignments: Sequence[str]) -> dict[str, Any]:
  """Turns ['width_multiplier=0.25', 'fc_layers=(4096,4096)'] into keyword arguments."""
  options = {}
  for assignment in assignments:
    key, sep, value = assignment.partition('=')
    if not sep:
      raise ValueError(f'--set expects key=value, got {assignment!r}.')
    try:
      options[key.strip()] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      options[key.strip()] = value  # A bare word such as relu is a string.
  return options
