r"""Size and speed of every registered model on this machine (the paper's Table 3), in one run.

  python -m xception_jax.report                                   # 299 px, batch 32 per device
  python -m xception_jax.report --image_size=150 --batch_size=16 --models=xception,inception_v3
  python -m xception_jax.report --dtype=bfloat16 --out=report.md

Parameters: trainable, at full size (default options, 1,000 classes), whatever
the speed flags. Speed: the trainer's own training step for the default
config (the Xception recipe: SGD with momentum, weight decay, Polyak
averaging, BN per device), built by `trainer.timing` from the trainer's
`Setup` and jitted over every device as the training loop jits it, on a
fixed random batch kept on the devices (no input pipeline), timed over
--steps after --warmup steps (compilation included in the warm-up, reported
separately).
"""
from __future__ import annotations

import dataclasses
import gc
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
from absl import app, flags

from xception_jax import models
from xception_jax.tools import model_table
from xception_jax.trainer import timing, train
from xception_jax.trainer.config_defaults import base_config
from xception_jax.trainer.state import DTYPES
from xception_jax.weights import tree

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined only when it runs: other tools share flag names)."""
  flags.DEFINE_list('models', [], 'Models to report (default: every registered one).')
  flags.DEFINE_integer('batch_size', 0, 'Global batch (default: 32 per device).')
  flags.DEFINE_integer('image_size', 299, 'Square input size for the speed run.')
  flags.DEFINE_integer('steps', 10, 'Timed training steps per model.')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps first (the first one compiles).')
  flags.DEFINE_enum('dtype', 'auto', ['auto', *sorted(DTYPES)], 'Compute dtype of the speed run '
                    '(auto: bfloat16 on GPU and TPU, float32 on CPU).')
  flags.DEFINE_multi_string('set', [], 'Model option for the speed run as key=value, e.g. '
                            'width_multiplier=0.25 (parameter counts stay full size).')
  flags.DEFINE_string('out', '', 'Also write the table to this file.')

NUM_CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class Row:
  model: str
  parameters: int
  steps_per_second: float
  images_per_second: float
  compile_seconds: float


def full_size_parameters(name: str) -> int:
  """Trainable parameters of `name` with its default options and 1,000 classes."""
  variables = tree.variable_template(models.create_model(name, num_classes=NUM_CLASSES))
  return model_table.count(variables['params'])


def measure_training(config, num_steps: int, warmup: int = 2) -> tuple[float, float]:
  """(training steps per second, seconds of compilation and warm-up) of the trainer's own
  step for `config` (`timing.training_step`) on a fixed random batch."""
  started = time.perf_counter()
  timed = timing.training_step(config)
  train.exempt_from_collection()   # As the trainer does once its step is compiled.
  try:
    for _ in range(warmup):
      timed.run()
    warmed = time.perf_counter()
    for _ in range(num_steps):
      timed.run()
    return num_steps / (time.perf_counter() - warmed), warmed - started
  finally:
    gc.unfreeze()


def report(names: Sequence[str], batch_size: int, image_size: int, num_steps: int,
           warmup: int = 2, dtype: str = 'float32',
           options: Optional[dict[str, Any]] = None) -> list[Row]:
  """A row per model: full-size parameter count, training steps/s and images/s."""
  rows = []
  for name in names:
    config = base_config()
    config.model, config.batch_size, config.image_size, config.dtype = (
        name, batch_size, image_size, dtype)
    config.model_kwargs.update(options or {})
    rate, compile_seconds = measure_training(config, num_steps, warmup)
    rows.append(Row(name, full_size_parameters(name), rate, rate * batch_size, compile_seconds))
  return rows


def format_table(rows: Sequence[Row], batch_size: int, image_size: int, dtype: str,
                 options: Optional[dict[str, Any]] = None) -> str:
  """A Markdown table under a line that says what ran where."""
  devices = jax.devices()
  kind = devices[0].device_kind
  header = (f'{len(devices)} × {kind} ({jax.default_backend()}), {jax.process_count()} '
            f'process(es); training at {image_size}×{image_size}, global batch {batch_size}, '
            f'{dtype}' + (f', options {options}' if options else '') +
            '; parameters at full size, 1,000 classes.')
  lines = [header, '', '| model | parameters | steps/s | images/s | compile + warm-up (s) |',
           '|---|---:|---:|---:|---:|']
  lines += [f'| {r.model} | {r.parameters:,} | {r.steps_per_second:.3g} | '
            f'{r.images_per_second:.3g} | {r.compile_seconds:.0f} |' for r in rows]
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    names = FLAGS.models or models.list_models()
    for name in names:
      models.model_class(name)
    options = models.parse_options(FLAGS.set)
    batch_size = FLAGS.batch_size or 32 * jax.device_count()
    rows = report(names, batch_size, FLAGS.image_size, FLAGS.steps, FLAGS.warmup, FLAGS.dtype,
                  options)
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  table = format_table(rows, batch_size, FLAGS.image_size, FLAGS.dtype, options)
  print(table)
  if FLAGS.out:
    Path(FLAGS.out).write_text(table + '\n')


if __name__ == '__main__':
  define_flags()
  app.run(main)
