"""The papers' evaluation protocols: crops per image, model ensembles, several test sets.

Each member (a trained or converted model, `predictor.Predictor`) sees the
split's examples in the same order, batch by batch, each with its own input
size, preprocessing and crops (data/crops.py). An example's probabilities are
the softmax averaged over its crops; the ensemble's are the members'
averaged. Top-1 and top-5 are scored on the fly, so no member's predictions
for the whole split are ever held. Labels may be sets of right answers
(ImageNet-ReaL): a prediction is right when it is in the set, and an example
whose set is empty is not scored.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xception_jax import models
from xception_jax.data import crops as eval_crops
from xception_jax.data import pipeline, sources
from xception_jax.trainer import sharding
from xception_jax.trainer.predictor import Predictor


@dataclasses.dataclass
class Score:
  """Counts of right answers: top-1 and top-5 hits over `count` scored examples."""
  top1: float = 0.0
  top5: float = 0.0
  count: float = 0.0

  def add(self, probabilities: np.ndarray, answers: np.ndarray, scored: np.ndarray) -> None:
    """Adds a batch: [B, C] probabilities, [B, C] multi-hot right answers, [B] 0/1 scored."""
    top = np.argsort(-probabilities, axis=-1, kind='stable')[:, :5]
    hits = np.take_along_axis(answers, top, axis=-1) > 0
    self.top1 += float(np.sum(hits[:, 0] * scored))
    self.top5 += float(np.sum(np.any(hits, axis=-1) * scored))
    self.count += float(np.sum(scored))

  def result(self) -> dict[str, float]:
    """Accuracies as fractions, and the number of examples scored."""
    count = self.count or float('nan')
    return {'top1': self.top1 / count, 'top5': self.top5 / count, 'count': self.count}


def right_answers(labels: np.ndarray, mask: np.ndarray,
                  num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Multi-hot right answers for class indices or label sets, and which examples are scored:
  real (not padding) examples with at least one right answer."""
  answers = labels if labels.ndim == 2 else np.eye(num_classes, dtype=np.float32)[labels]
  return answers, (mask > 0) & (answers.sum(axis=-1) > 0)


def _probabilities(model, variables, images):
  """[B, crops, H, W, 3] → [B, classes] softmax probabilities averaged over the crops."""
  batch, count = images.shape[:2]
  logits = model.apply(variables, images.reshape(batch * count, *images.shape[2:]))
  return jax.nn.softmax(logits).reshape(batch, count, -1).mean(axis=1)


def unique_names(names: Sequence[str]) -> list[str]:
  """`names`, a repeated one suffixed '#2', '#3', ... (an ensemble may hold a model twice)."""
  seen: dict[str, int] = {}
  unique = []
  for name in names:
    seen[name] = seen.get(name, 0) + 1
    unique.append(name if seen[name] == 1 else f'{name}#{seen[name]}')
  return unique


def evaluate(members: dict[str, Predictor], source: sources.Source, split: str,
             scheme: str = 'center', batch_size: int = 16,
             progress: Optional[Callable[[str], None]] = None) -> dict:
  """Scores each member and, with two or more, their ensemble on every example of `split`.

  `batch_size` examples (global, a multiple of the device count) go through
  each member per step, sharded over all devices of all processes. Returns
  {'members': {name: {'top1', 'top5', 'count'}}, 'ensemble': {...}} (the
  ensemble with two or more members), accuracies as fractions; 'unscored'
  counts the examples without a right answer (empty ReaL sets).
  """
  if source.multilabel:
    raise ValueError('Multi-label data sets are scored by MAP in the trainer, not by top-k: '
                     'evaluate them with --config.eval_only.')
  if scheme not in eval_crops.SCHEMES:
    raise ValueError(f'Unknown crop scheme {scheme!r}; choose one of '
                     f'{", ".join(eval_crops.SCHEMES)}.')
  for name, member in members.items():
    if member.model.num_classes != source.num_classes:
      raise ValueError(f'{name} predicts {member.model.num_classes} classes; the data set has '
                       f'{source.num_classes}.')
  mesh = sharding.make_mesh()
  local_batch = sharding.check_batch_size(batch_size, mesh)
  num_examples = source.split_size(split)
  replicated = sharding.replicated(mesh)
  streams, steps, variables = [], [], []
  for member in members.values():
    dataset, num_batches = pipeline.eval_batches(
        source, split, local_batch, member.preprocessing, crops=scheme,
        process_index=jax.process_index(), process_count=jax.process_count(),
        num_examples=num_examples)
    streams.append(pipeline.numpy_batches(dataset))
    model = member.model
    steps.append(jax.jit(lambda v, b, model=model: (_probabilities(model, v, b['image']),
                                                    b['label'], b['mask']),
                         out_shardings=replicated,
                         compiler_options=models.compiler_options(model=model)))
    variables.append(jax.device_put(member.variables, replicated))
  scores = {name: Score() for name in members}
  ensemble, unscored = Score(), 0.0
  started, reported = time.monotonic(), time.monotonic()
  for index, batches in enumerate(zip(*streams), 1):
    outputs = [jax.device_get(step(v, sharding.global_batch(batch, mesh)))
               for step, v, batch in zip(steps, variables, batches)]
    _, labels, mask = outputs[0]
    answers, scored = right_answers(labels, mask, source.num_classes)
    unscored += float(np.sum((mask > 0) & ~scored))
    for score, (probabilities, _, _) in zip(scores.values(), outputs):
      score.add(probabilities, answers, scored)
    if len(members) > 1:
      ensemble.add(np.mean([p for p, _, _ in outputs], axis=0), answers, scored)
    if progress and (time.monotonic() - reported > 10 or index == num_batches):
      reported = time.monotonic()
      elapsed = reported - started
      rate = index * batch_size * len(members) / elapsed
      progress(f'batch {index}/{num_batches}, {rate:.1f} images/s per member set, '
               f'{elapsed / index * (num_batches - index):.0f} s left')
  counted = next(iter(scores.values())).count + unscored
  if round(counted) != num_examples:
    raise RuntimeError(f'The evaluation counted {counted:.0f} examples of {split}, expected '
                       f'{num_examples}.')
  results = {'members': {name: score.result() for name, score in scores.items()}}
  if len(members) > 1:
    results['ensemble'] = ensemble.result()
  if unscored:
    results['unscored'] = unscored
  return results


def error_table(results: dict, scheme: str) -> str:
  """The results as the Inception-v4 paper's tables: network, crops, top-1 and top-5 error."""
  crops = 'center' if scheme == 'center' else scheme
  rows = [(name, r) for name, r in results['members'].items()]
  if 'ensemble' in results:
    rows.append((f'ensemble of {len(results["members"])}', results['ensemble']))
  width = max(len('Network'), *(len(name) for name, _ in rows))
  lines = [f'{"Network":<{width}}  {"Crops":>6}  {"Top-1 error":>11}  {"Top-5 error":>11}  '
           f'{"Images":>7}']
  for name, r in rows:
    lines.append(f'{name:<{width}}  {crops:>6}  {100 * (1 - r["top1"]):>10.2f}%  '
                 f'{100 * (1 - r["top5"]):>10.2f}%  {r["count"]:>7.0f}')
  return '\n'.join(lines)
