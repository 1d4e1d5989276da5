"""The trainer's command line: `--config.FIELD=VALUE` overrides checked by name, and model
options (`--config.model_kwargs.OPTION=VALUE`) for any option of the chosen model,
whether or not the config file declares it.

JAX is imported only when parsing starts (main.py may re-execute itself first).
"""
from __future__ import annotations

import sys

from absl import flags

PREFIX = '--config.'
MODEL_OPTION_PREFIX = '--config.model_kwargs.'


def split_model_options(argv: list[str]) -> tuple[list[str], list[str]]:
  """(argv without model options, ['OPTION=VALUE', ...]); '--flag VALUE' and '--flag=VALUE'."""
  rest, options, args = [], [], iter(argv)
  for arg in args:
    if arg.startswith(MODEL_OPTION_PREFIX):
      option = arg[len(MODEL_OPTION_PREFIX):]
      options.append(option if '=' in option else f'{option}={next(args, "")}')
    else:
      rest.append(arg)
  return rest, options


def unknown_override(argv: list[str]) -> str:
  """The first `--config.FIELD` whose FIELD the trainer does not have ('' when none)."""
  from xception_jax.trainer import validation
  for arg in argv:
    if arg.startswith(PREFIX):
      name = arg[len(PREFIX):].partition('=')[0]
      if name not in validation.RULES:
        return name
  return ''


class Parser:
  """`app.run`'s flags parser: keeps the model options aside for `with_model_options`."""

  def __init__(self):
    self.model_options: list[str] = []

  def __call__(self, argv: list[str]) -> list[str]:
    argv, self.model_options = split_model_options(argv)
    sys.argv[:] = argv  # config_flags reads its overrides from sys.argv.
    unknown = unknown_override(argv)
    if unknown:
      from xception_jax.trainer import validation
      sys.exit(f'error: {validation.unknown_field_error(unknown)}')
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      sys.exit(f'FATAL Flags parsing error: {e}')

  def with_model_options(self, config):
    """`config` with the command line's model options in `model_kwargs` (values as Python
    literals; a bare word is a string)."""
    from xception_jax import models
    options = models.parse_options(self.model_options)
    if options:
      with config.unlocked():
        config.model_kwargs.update(options)
    return config
