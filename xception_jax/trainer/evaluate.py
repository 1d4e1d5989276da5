"""Evaluation over a whole split (every example counted once) and eval-only runs."""
from __future__ import annotations

import functools
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from xception_jax import models, weights
from xception_jax.trainer import distributed, multilabel, sharding, steps, validation
from xception_jax.trainer.checkpoints import Checkpoints
from xception_jax.data import pipeline, sources
from xception_jax.models.inputs import Preprocessing
from xception_jax.trainer.metric_writers import MetricWriter
from xception_jax.trainer.state import (build_model, init_from_directory, step_compiler_options,
                                        with_init_from_model)

METRICS = ('top1', 'top5', 'loss')
PER_CLASS_FILE = 'per_class_ap.json'


def eval_preprocessing(config: ml_collections.ConfigDict) -> Preprocessing:
  """A training config's evaluation preprocessing (image size, central crop, resize)."""
  return Preprocessing(config.image_size, config.eval_crop_fraction,
                       config.get('eval_resize', 'bilinear'))


# One jitted function per distinct setting: evaluators that agree (a run's extra evaluation
# sets with the same classes, later runs in the same process) share its trace and compilation.
@functools.lru_cache(maxsize=16)
def jitted_eval_step(model, num_classes: int, multilabel: bool, top_k: int,
                     mesh: jax.sharding.Mesh, compiler_options: tuple[tuple[str, Any], ...],
                     class_weights: Optional[tuple[float, ...]] = None):
  """steps.eval_step for these settings, jitted with replicated outputs (the arguments are
  hashable: compiler options as sorted (name, value) pairs, class weights as a tuple)."""
  return jax.jit(functools.partial(
      steps.eval_step, model=model, num_classes=num_classes, multilabel=multilabel,
      top_k=top_k, class_weights=None if class_weights is None else np.asarray(class_weights,
                                                                              np.float32)),
                 out_shardings=sharding.replicated(mesh), compiler_options=dict(compiler_options))


class Evaluator:
  """Evaluates sets of variables on a split; compiled once, reused for every evaluation.

  Single-label data: top-1, top-5, loss. Multi-label data (`source.multilabel`):
  loss, MAP@k ('map100' for k = 100) and the class-weighted mean of the
  per-class APs ('class_map'), as defined in xception_jax.trainer.multilabel; the
  per-class APs of the last call are in `per_class_ap`.
  """

  def __init__(self, model, source: sources.Source, config: ml_collections.ConfigDict,
               mesh: jax.sharding.Mesh, split: Optional[str] = None):
    self.source, self.config, self.mesh = source, config, mesh
    self.split = split or config.eval_split
    self.local_batch = sharding.check_batch_size(config.get('eval_batch_size') or
                                                 config.batch_size, mesh)
    self.num_examples = source.split_size(self.split)
    self.bad_images = config.get('bad_images', 'error')
    self.top_k = config.get('map_top_k', 100)
    self.class_weights = None
    if source.multilabel and config.get('class_weights'):
      self.class_weights = multilabel.load_class_weights(config.class_weights,
                                                         source.class_names)
    self.per_class_ap: dict[str, np.ndarray] = {}
    # The jitted evaluation step: (variable sets, global batch) → (sums, rankings).
    self.step = jitted_eval_step(
        model, source.num_classes, source.multilabel, self.top_k, mesh,
        tuple(sorted(step_compiler_options(config, model).items())),
        None if self.class_weights is None else tuple(self.class_weights.tolist()))

  def __call__(self, variable_sets: dict[str, Any]) -> dict[str, float]:
    """{'count', '<metric><suffix>' ...} averaged over the split (see the class docstring)."""
    dataset, _ = pipeline.eval_batches(
        self.source, self.split, self.local_batch, eval_preprocessing(self.config),
        process_index=jax.process_index(), process_count=jax.process_count(),
        num_examples=self.num_examples, bad_images=self.bad_images)
    totals: dict[str, np.ndarray] = defaultdict(float)
    rankings = []
    files_of = lambda index: pipeline.eval_files_of_batch(
        self.source, self.split, self.local_batch, index, jax.process_index(),
        jax.process_count())
    batches = pipeline.naming_bad_images(pipeline.numpy_batches(dataset), files_of,
                                         f'{self.split} split (evaluation)')
    for batch in batches:
      sums, ranked = jax.device_get(self.step(variable_sets, sharding.global_batch(batch,
                                                                                   self.mesh)))
      for key, value in sums.items():
        totals[key] += np.asarray(value, np.float64)
      if ranked:
        rankings.append(ranked)
    count = float(totals.pop('count'))
    skipped = self.num_examples - round(count)
    if skipped and (self.bad_images != 'skip' or skipped < 0):
      raise RuntimeError(f'Evaluation counted {count:.0f} examples of {self.split}, '
                         f'expected {self.num_examples}.')
    if skipped:
      logging.warning('Evaluation skipped %d image(s) of %s that do not decode; counted %d.',
                      skipped, self.split, round(count))
    if not self.source.multilabel:
      results = self._single_label_results(count, totals, list(variable_sets))
    else:
      results = self._multilabel_results(count, totals, rankings, list(variable_sets))
    return {**results, 'skipped_images': float(skipped)} if skipped else results

  @staticmethod
  def _single_label_results(count, totals, suffixes) -> dict[str, float]:
    """Per-example means over the scored examples; 'unscored': those with no right answer
    (an empty ReaL set), which no metric counts."""
    scored = float(totals[f'scored{suffixes[0]}'])
    results = {'count': scored}
    for key, value in totals.items():
      if not key.startswith('scored'):
        results[key] = float(value) / scored if scored else float('nan')
    if scored != count:
      results['unscored'] = count - scored
    return results

  def _multilabel_results(self, count, totals, rankings, suffixes) -> dict[str, float]:
    has_ap = float(totals.pop('has_ap'))
    positives = totals.pop('positives')
    kept = np.concatenate([r['mask'] for r in rankings]) > 0
    self.per_class_ap = {'positives': positives}
    results = {'count': count, 'images_with_ap': has_ap}
    for suffix in suffixes:
      ranked = {key: np.concatenate([r[suffix][key] for r in rankings])[kept]
                for key in ('classes', 'scores', 'relevant')}
      ap = multilabel.per_class_average_precision(**ranked, positives=positives)
      self.per_class_ap[f'ap{suffix}'] = ap
      results[f'loss{suffix}'] = float(totals[f'loss{suffix}']) / count
      results[f'map{self.top_k}{suffix}'] = (float(totals[f'ap_sum{suffix}']) / has_ap
                                             if has_ap else float('nan'))
      results[f'class_map{suffix}'] = multilabel.weighted_class_mean(ap, self.class_weights)
    return results

  def write_per_class_ap(self, workdir: Path, step: int) -> None:
    """The last call's per-class APs (null: no positives) as `per_class_ap.json`."""
    if not self.per_class_ap:
      return
    as_list = lambda a: [None if np.isnan(x) else float(x) for x in a]
    record = {'step': int(step), 'split': self.split, 'classes': list(self.source.class_names),
              'positives': [int(n) for n in self.per_class_ap['positives']]}
    record.update({k: as_list(v) for k, v in self.per_class_ap.items() if k != 'positives'})
    (Path(workdir) / PER_CLASS_FILE).write_text(json.dumps(record) + '\n')


def parse_eval_datasets(spec: str) -> list[tuple[str, str, str]]:
  """'[NAME=]DATASET[@SPLIT],...' → [(name, dataset, split)]: the name defaults to the data
  set's ('imagenet_v2', a folder's last component), the split to the set's evaluation split."""
  parsed = []
  for item in filter(None, (part.strip() for part in spec.split(','))):
    name, _, rest = item.rpartition('=') if re.match(r'\w+=', item) else ('', '', item)
    dataset, _, split = rest.partition('@')
    name = name or re.sub(r'\W+', '_', dataset.rstrip('/').rsplit('/', 1)[-1]
                          if dataset.startswith('folder:') else dataset).strip('_')
    parsed.append((name, dataset, split or sources.evaluation_split(dataset)))
  return parsed


def extra_sets(config: ml_collections.ConfigDict,
               num_classes: int) -> list[tuple[str, sources.Source, str]]:
  """(name, source, split) of each of `eval_datasets`; a ValueError for a set whose classes
  are not the model's."""
  extra = []
  for name, dataset, split in parse_eval_datasets(config.get('eval_datasets', '')):
    source = sources.get_source(dataset, data_dir=config.get('data_dir'),
                                manual_dir=config.get('manual_dir'),
                                bad_images=config.get('bad_images', 'error'))
    if source.num_classes != num_classes:
      raise ValueError(f'eval_datasets: {dataset} has {source.num_classes} classes, the model '
                       f'{num_classes}.')
    extra.append((name, source, split))
  return extra


def evaluate_only(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Evaluates `config.init_from` (converted weights), else the workdir's latest checkpoint.

  With `model=''` and converted weights that record them, the weights' model
  and evaluation preprocessing are used. Writes the metrics to the workdir
  (metrics.jsonl and eval_only.json) and returns them; a checkpoint gives raw
  and averaged ('_ema') metrics.
  """
  config = with_init_from_model(config, evaluation=True)
  validation.validate(config)
  distributed.initialize(config)
  workdir_path = Path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh()
  source = sources.source_for(config)
  model = build_model(config, source.num_classes)
  replicated = sharding.replicated(mesh)
  if config.get('init_from'):
    variables = weights.load_variables(init_from_directory(config))
    classes = variables['params'].get('head', {}).get('predictions', {}).get('bias')
    if classes is None or classes.shape[0] != source.num_classes:
      raise ValueError(f'{config.init_from} has no classifier for the {source.num_classes} '
                       f'classes of {config.dataset}: nothing to evaluate it with.')
    variable_sets, step = {'': jax.device_put(variables, replicated)}, 0
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
  evaluator = Evaluator(model, source, config, mesh)
  results = evaluator(variable_sets)
  if jax.process_index() == 0:
    evaluator.write_per_class_ap(workdir_path, step)
    writer = MetricWriter(workdir_path)
    writer.write(step, {f'eval/{k}': v for k, v in results.items()})
    writer.close()
    (workdir_path / 'eval_only.json').write_text(json.dumps({'step': step, **results}, indent=2))
  return results
