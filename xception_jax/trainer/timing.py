"""The trainer's own steps on a fixed batch, set up to be timed (benchmarks, `report`).

`training_step(config)` builds the trainer's `Setup` for `config` on a
synthetic data source (classes and a split size, no files), the step-0 state
and a random batch, and binds them to the very function the training loop
calls, `Setup.train_steps(...)`: the config's optimizer, weight decay,
Polyak averaging, finiteness guard, batch-norm groups, shardings, donation
and compiler options, nothing re-implemented. `eval_step(config)` does the
same for the evaluation step (`Evaluator.step`).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from xception_jax.data import sources
from xception_jax.trainer import sharding, train
from xception_jax.trainer.evaluate import Evaluator

IMAGENET_TRAIN_EXAMPLES = 1_281_167  # What the recipes' schedules are written for.


class SyntheticSource(sources.Source):
  """`num_classes` classes and `size` examples per split, none of them readable."""

  def __init__(self, num_classes: int = 1000, size: int = IMAGENET_TRAIN_EXAMPLES):
    self.class_names = [str(i) for i in range(num_classes)]
    self.size = size

  def split_size(self, split: str) -> int:
    return self.size

  def read(self, split, part=sources.Part(), shuffle_seed=None, shuffle_buffer=0, limit=None):
    raise NotImplementedError('A synthetic source has no examples to read.')


@dataclasses.dataclass
class TimedStep:
  """One call of `function` (`steps_per_call` steps) on fixed arguments, ready to time.

  `run()` makes the call and waits for it; `compiled` is the function's compiled
  form (XLA's cost and memory analysis); `compile_seconds` is what compiling took.
  """
  function: Any
  compiled: Any
  run: Callable[[], Any]
  compile_seconds: float
  steps_per_call: int
  batch_size: int


def random_batch(batch_size: int, image_size: int, num_classes: int, seed: int = 0,
                 leading: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
  """Images uniform in [-1, 1] and labels, with `leading` axes before the batch axis."""
  rng = np.random.default_rng(seed)
  shape = (*leading, batch_size)
  return {'image': rng.uniform(-1, 1, (*shape, image_size, image_size, 3)).astype(np.float32),
          'label': rng.integers(0, num_classes, shape).astype(np.int32)}


def _compiled(function, *args) -> tuple[Any, float]:
  started = time.perf_counter()
  compiled = function.lower(*args).compile()
  return compiled, time.perf_counter() - started


def training_step(config: ml_collections.ConfigDict, steps_per_call: int = 1,
                  source: Optional[sources.Source] = None) -> TimedStep:
  """The trainer's training step for `config` on a fixed random batch (see the module doc)."""
  setup = train.Setup(config, source=source or SyntheticSource())
  abstract = setup.abstract_state()
  state = setup.init_state(abstract)
  function = setup.train_steps(abstract, steps_per_call)
  batches = sharding.global_batch(
      random_batch(setup.local_batch, config.image_size, setup.source.num_classes,
                   leading=(steps_per_call,)), setup.mesh, stacked=True)
  compiled, seconds = _compiled(function, state, batches)

  def run():
    nonlocal state
    state, metrics = compiled(state, batches)
    jax.block_until_ready(metrics)

  return TimedStep(function, compiled, run, seconds, steps_per_call, config.batch_size)


def eval_step(config: ml_collections.ConfigDict,
              source: Optional[sources.Source] = None) -> TimedStep:
  """The trainer's evaluation step for `config` (one set of variables) on a fixed batch."""
  setup = train.Setup(config, source=source or SyntheticSource())
  evaluator = Evaluator(setup.model, setup.source, config, setup.mesh)
  state = setup.init_state(setup.abstract_state())
  variable_sets = {'': state.variables()}
  batch = random_batch(evaluator.local_batch, config.image_size, setup.source.num_classes)
  batch['mask'] = np.ones(evaluator.local_batch, np.float32)
  batch = sharding.global_batch(batch, setup.mesh)
  compiled, seconds = _compiled(evaluator.step, variable_sets, batch)
  run = lambda: jax.block_until_ready(compiled(variable_sets, batch))
  return TimedStep(evaluator.step, compiled, run, seconds, 1,
                   config.get('eval_batch_size') or config.batch_size)
