"""Evaluation over a whole split (every example counted once) and eval-only runs."""
from __future__ import annotations

import functools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import jax
import ml_collections

from xception_jax import distributed, sharding, steps, weights
from xception_jax.checkpoints import Checkpoints
from xception_jax.data import pipeline, sources
from xception_jax.metric_writers import MetricWriter
from xception_jax.state import build_model

METRICS = ('top1', 'top5', 'loss')


class Evaluator:
  """Evaluates sets of variables on a split; compiled once, reused for every evaluation."""

  def __init__(self, model, source: sources.Source, config: ml_collections.ConfigDict,
               mesh: jax.sharding.Mesh):
    self.source, self.config, self.mesh = source, config, mesh
    self.split = config.eval_split
    self.local_batch = sharding.check_batch_size(config.get('eval_batch_size') or
                                                 config.batch_size, mesh)
    self.num_examples = source.split_size(self.split)
    self._step = jax.jit(functools.partial(steps.eval_step, model=model,
                                           num_classes=source.num_classes),
                         out_shardings=sharding.replicated(mesh))

  def __call__(self, variable_sets: dict[str, Any]) -> dict[str, float]:
    """{'count', 'top1<suffix>', 'top5<suffix>', 'loss<suffix>'} averaged over the split."""
    dataset, _ = pipeline.eval_batches(
        self.source, self.split, self.local_batch, self.config.image_size,
        self.config.eval_crop_fraction, jax.process_index(), jax.process_count(),
        num_examples=self.num_examples)
    totals: dict[str, float] = defaultdict(float)
    for batch in dataset.as_numpy_iterator():
      sums = self._step(variable_sets, sharding.global_batch(batch, self.mesh))
      for key, value in jax.device_get(sums).items():
        totals[key] += float(value)
    count = totals.pop('count')
    if round(count) != self.num_examples:
      raise RuntimeError(f'Evaluation counted {count:.0f} examples of {self.split}, '
                         f'expected {self.num_examples}.')
    return {'count': count, **{k: v / count for k, v in totals.items()}}


def evaluate_only(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Evaluates `config.init_from` (converted weights), else the workdir's latest checkpoint.

  Writes the metrics to the workdir (metrics.jsonl and eval_only.json) and
  returns them; a checkpoint gives raw and averaged ('_ema') metrics.
  """
  distributed.initialize(config)
  workdir_path = Path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh()
  source = sources.get_source(config.dataset, data_dir=config.get('data_dir'),
                              manual_dir=config.get('manual_dir'))
  model = build_model(config, source.num_classes)
  replicated = sharding.replicated(mesh)
  if config.get('init_from'):
    variables = jax.device_put(weights.load_variables(config.init_from), replicated)
    variable_sets, step = {'': variables}, 0
  else:
    checkpoints = Checkpoints(workdir_path / 'checkpoints', async_save=False)
    if not checkpoints.steps():
      raise ValueError(f'No checkpoint in {workdir_path / "checkpoints"} and no init_from: '
                       'nothing to evaluate.')
    step = checkpoints.steps()[-1]
    saved = checkpoints.restore_arrays(step)
    variable_sets = jax.device_put({
        '': {'params': saved['params'], 'batch_stats': saved['batch_stats']},
        '_ema': {'params': saved['ema_params'], 'batch_stats': saved['ema_batch_stats']}},
                                   replicated)
  results = Evaluator(model, source, config, mesh)(variable_sets)
  if jax.process_index() == 0:
    writer = MetricWriter(workdir_path)
    writer.write(step, {f'eval/{k}': v for k, v in results.items()})
    writer.close()
    (workdir_path / 'eval_only.json').write_text(json.dumps({'step': step, **results}, indent=2))
  return results
