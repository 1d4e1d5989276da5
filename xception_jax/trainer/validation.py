"""Every config field's valid values, checked in one place before a run touches a device or a file.

`validate(config)` raises a one-line ValueError for the first field out of
range, of an unknown value, or unknown to the trainer (naming the closest
known one); model options (`model_kwargs`) are checked against the chosen
model's own attributes.
"""
from __future__ import annotations

import difflib
import numbers
import re
from typing import Any, Callable

import ml_collections

from xception_jax import models
from xception_jax.models.execution import FORMS
from xception_jax.trainer import param_groups
from xception_jax.trainer.config_defaults import base_config

Rule = Callable[[Any], str]  # A value → '' when valid, else what a valid value is.


def integer(low: int = 0, optional: bool = False) -> Rule:
  def check(value):
    if value is None and optional:
      return ''
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low
    return '' if ok else f'an integer >= {low}'
  return check


def number(low: float = 0.0, high: float = float('inf'), low_open: bool = False,
           high_open: bool = False) -> Rule:
  if high == float('inf'):
    expected = f'a number {">" if low_open else ">="} {low:g}'
  else:
    expected = f'a number in {"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'

  def check(value):
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or value != value:
      return expected
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    return '' if above and below else expected
  return check


def one_of(*choices) -> Rule:
  return lambda value: '' if value in choices else 'one of ' + ', '.join(map(repr, choices))


def boolean(value) -> str:
  return '' if isinstance(value, bool) else 'True or False'


def text(optional: bool = False, nonempty: bool = False) -> Rule:
  def check(value):
    if value is None and optional:
      return ''
    ok = isinstance(value, str) and (value or not nonempty)
    if ok:
      return ''
    return 'a non-empty string' if nonempty else 'a string or None' if optional else 'a string'
  return check


def interval(low: float, high: float) -> Rule:
  """A pair (a, b) with low < a <= b <= high."""
  def check(value):
    ok = (isinstance(value, (tuple, list)) and len(value) == 2 and
          all(isinstance(v, numbers.Real) for v in value) and low < value[0] <= value[1] <= high)
    bound = '' if high == float('inf') else f' <= {high:g}'
    return '' if ok else f'a pair (a, b) with {low:g} < a <= b{bound}'
  return check


def dataset(value) -> str:
  ok = isinstance(value, str) and value
  return '' if ok else ("a data set: a TFDS name, 'folder:PATH', 'multilabel:PATH', 'digits' "
                        "or 'digits_multilabel'")


def dataset_list(value) -> str:
  """'[NAME=]DATASET[@SPLIT],...' (eval_datasets)."""
  from xception_jax.trainer.evaluate import parse_eval_datasets
  ok = isinstance(value, str) and all(name and dataset
                                      for name, dataset, _ in parse_eval_datasets(value))
  return '' if ok else ("'[NAME=]DATASET[@SPLIT],...' (e.g. "
                        "'imagenet2012_real,v2=imagenet_v2@test')")


def option_list(value) -> str:
  """'name=value,...' with XLA option names (compiler_options)."""
  ok = isinstance(value, str) and all(
      re.fullmatch(r'xla_\w+=.+', item.strip()) for item in value.split(',') if item.strip())
  return '' if ok else "'xla_NAME=VALUE,...' (XLA compiler options)"


def model_name(value) -> str:
  if value == '' or value in models.list_models():
    return ''
  return "one of " + ', '.join(models.list_models()) + " ('' with init_from: its model)"


def freeze_pattern(value) -> str:
  if not isinstance(value, str):
    return "'', 'backbone', 'head' or a regular expression over parameter paths"
  problem = param_groups.check_pattern(value)
  return f"'', 'backbone', 'head' or a regular expression ({problem})" if problem else ''


def multipliers(value) -> str:
  try:
    param_groups.parse_multipliers(value if isinstance(value, str) else None)
  except (ValueError, AttributeError):
    return "'PATTERN=M,...' (PATTERN 'backbone', 'head' or a regular expression; M >= 0)"
  return ''


def field_names(value) -> str:
  """A comma-separated list of config fields (resume_with_changes)."""
  if not isinstance(value, str):
    return 'a comma-separated list of config fields'
  unknown = [n for n in split_names(value) if n not in RULES and not n.startswith('model_kwargs.')]
  return f'a list of config fields (unknown: {", ".join(unknown)})' if unknown else ''


def split_names(value: str) -> list[str]:
  return [n.strip() for n in value.split(',') if n.strip()]


EXECUTION_RULES = {f'execution.{name}': one_of('auto', *forms)
                   for name, forms in FORMS.items()}

RULES: dict[str, Rule] = {
    'seed': integer(0),
    'model': model_name,
    'model_kwargs': lambda value: '',  # Checked per option: check_model_options.
    **EXECUTION_RULES,
    'execution.remat': boolean,
    'dtype': one_of('auto', 'float32', 'bfloat16'),
    'compiler_options': option_list,
    'init_from': text(),
    'freeze': freeze_pattern,
    'lr_multipliers': multipliers,
    'dataset': dataset,
    'label_key': text(nonempty=True),
    'data_dir': text(optional=True),
    'manual_dir': text(optional=True),
    'train_split': text(nonempty=True),
    'eval_split': text(nonempty=True),
    'eval_datasets': dataset_list,
    'image_size': integer(1),
    'eval_crop_fraction': number(0, 1, low_open=True),
    'eval_resize': one_of('bilinear', 'bicubic'),
    'shuffle_buffer': integer(0),
    'augment.min_object_covered': number(0, 1),
    'augment.aspect_ratio_range': interval(0, float('inf')),
    'augment.area_range': interval(0, 1),
    'augment.flip': boolean,
    'augment.color_distortion': one_of('fast', 'slow', None),
    'batch_size': integer(1),
    'eval_batch_size': integer(0),
    'num_epochs': number(0),
    'total_steps': integer(0),
    'steps_per_call': integer(1),
    'optimizer': one_of('sgd', 'rmsprop', 'adam', 'adamw'),
    'learning_rate': number(0),
    'reference_batch_size': integer(0),
    'momentum': number(0, 1, high_open=True),
    'nesterov': boolean,
    'rmsprop_decay': number(0, 1, high_open=True),
    'rmsprop_epsilon': number(0, low_open=True),
    'adamw_weight_decay': number(0),
    'lr_schedule': one_of('exponential', 'cosine'),
    'lr_decay_rate': number(0, 1, low_open=True),
    'lr_decay_epochs': number(0, low_open=True),
    'lr_decay_examples': integer(0),
    'warmup_epochs': number(0),
    'weight_decay': number(0),
    'label_smoothing': number(0, 1, high_open=True),
    'grad_clip_norm': number(0),
    'aux_loss_weight': number(0),
    'batch_norm': one_of('device', 'global'),
    'ema_decay': number(0, 1, high_open=True),
    'ema_warmup': boolean,
    'map_top_k': integer(1),
    'class_weights': text(),
    'log_every_steps': integer(1),
    'eval_every_steps': integer(0),
    'checkpoint_every_steps': integer(0),
    'keep_checkpoints': integer(1),
    'async_checkpoints': boolean,
    'eval_only': boolean,
    'nonfinite_steps': one_of('stop', 'skip'),
    'compilation_cache_dir': text(),
    'bad_images': one_of('error', 'skip'),
    'resume_with_changes': field_names,
    'workdir_lock_stale_seconds': number(0, low_open=True),
    'distributed.enabled': boolean,
    'distributed.coordinator_address': text(optional=True),
    'distributed.num_processes': integer(1, optional=True),
    'distributed.process_id': integer(0, optional=True),
}


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = '') -> dict[str, Any]:
  """{'augment.flip': True, ...}: every leaf by its dotted path; model_kwargs' options too."""
  flat = {}
  for key, value in config.items():
    path = f'{prefix}{key}'
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      flat.update(flatten(value, path + '.'))
      if path == 'model_kwargs' and not value:
        flat[path] = {}
    else:
      flat[path] = value
  return flat


def closest(name: str, names) -> str:
  match = difflib.get_close_matches(name, list(names), n=1, cutoff=0.5)
  return f' (did you mean {match[0]}?)' if match else ''


def unknown_field_error(name: str) -> str:
  """What to say about a config field the trainer does not have."""
  return f'The config has no field {name}{closest(name, RULES)}.'


def check_model_options(model: str, options: dict[str, Any]) -> None:
  valid = models.model_options(model)
  for name, value in options.items():
    if name not in valid:
      raise ValueError(f'{model} has no option {name}{closest(name, valid)}; its options: '
                       f'{", ".join(sorted(valid))}.')
    default = valid[name]
    if default is not None and value is not None and not _same_kind(value, default):
      raise ValueError(f'model_kwargs.{name} must be like {default!r} '
                       f'({type(default).__name__}), got {value!r}.')


def _same_kind(value, default) -> bool:
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(value, bool) and isinstance(default, bool)
  if isinstance(default, numbers.Real):
    return isinstance(value, numbers.Real)
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises a one-line ValueError naming the first invalid field, its value and what is valid."""
  for name, value in flatten(config).items():
    if name.startswith('model_kwargs.'):
      continue
    rule = RULES.get(name)
    if rule is None:
      raise ValueError(unknown_field_error(name))
    expected = rule(value)
    if expected:
      raise ValueError(f'{name} must be {expected}, got {value!r}.')
  if not config.model:
    raise ValueError("model is '' but init_from names no converted weights with a recorded "
                     'model: set --config.model or --config.init_from.')
  check_model_options(config.model, dict(config.get('model_kwargs', {})))
  if not config.get('total_steps') and not config.num_epochs:
    raise ValueError('num_epochs is 0 and total_steps is 0: set one of them > 0.')


def declared_fields() -> set[str]:
  """Every field of the defaults (what RULES must cover)."""
  return set(flatten(base_config()))
