r"""Trains and evaluates a model: python -m xception_jax.main --config=CONFIG --workdir=DIR."""
import logging as python_logging

from absl import app, flags, logging
from ml_collections import config_flags

from xception_jax.trainer import host_memory
from xception_jax.trainer.command_line import Parser

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and logs.')
flags.mark_flags_as_required(['config', 'workdir'])
_PARSER = Parser()


def quiet_checkpoint_logs() -> None:
  """Keeps Orbax's per-save INFO lines out of the console; its warnings still show."""
  handler = logging.get_absl_handler()
  handler.addFilter(lambda r: r.levelno >= python_logging.WARNING or 'orbax' not in r.pathname)


def main(argv):
  # Imported here, not above: JAX and TensorFlow take seconds to import, and
  # the process may have re-executed itself (host_memory) before this point.
  from xception_jax.trainer import evaluate, train

  host_memory.configure_jax()   # Before JAX's backend starts.
  from xception_jax.trainer.checkpoints import silence_failed_write_noise
  quiet_checkpoint_logs()
  silence_failed_write_noise()
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.info('host malloc: %s', host_memory.describe())
  config = _PARSER.with_model_options(_CONFIG.value)
  run = evaluate.evaluate_only if config.eval_only else train.train_and_evaluate
  try:
    run(config, _WORKDIR.value)
  except (ValueError, OSError, FloatingPointError) as e:  # One line, exit 1.
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  host_memory.reexec_with_allocator()
  app.run(main, flags_parser=_PARSER)
