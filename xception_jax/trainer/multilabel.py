r"""Multi-label evaluation (the paper's JFT / FastEval14k metric): MAP@k and per-class AP.

Definitions. k is `map_top_k` (100, the paper's MAP@100), or the number of
classes if that is smaller. Class c is a positive of image i when its label
is > 0. w_c ≥ 0 are the class weights (FastEval14k weights each class by how
common it is; all 1 without a weights file).

- Ranking: image i's classes sorted by logit, highest first; equal logits
  put the lower class index first (jax.lax.top_k's order). Its first k
  classes c_i(1..k) are the image's predictions; rel_i(r) = 1 if c_i(r) is a
  positive of i, else 0.
- Precision at rank r: prec_i(r) = (1 / r) Σ_{s ≤ r} rel_i(s) (unweighted).
- AP@k of image i: AP_i = Σ_{r=1..k} rel_i(r) · w_{c_i(r)} · prec_i(r) / ideal_i,
  where ideal_i is the sum of the min(|P_i|, k) largest weights among i's
  positives P_i: the value of the sum for a perfect ranking, so AP_i lies in
  [0, 1] and is 1 exactly for a perfect ranking. Positives ranked below k
  add nothing. Unweighted, ideal_i = min(|P_i|, k): the usual AP@k (the
  normalisation of the Google Landmark Retrieval challenges' mAP@100).
  Images with ideal_i = 0 (no positives, or only zero-weight ones) have no AP.
- MAP@k = the mean of AP_i over the images that have one.
- Per-class AP over the same predictions: pool every (image, logit) pair in
  which class c is among the image's top k, sort by logit, highest first
  (equal logits: earlier image in evaluation order first), and
  AP_c = Σ_r rel(r) · prec(r) / (number of positives of c in the split).
  Classes without positives have no AP (NaN). `class_map` is the mean of
  AP_c over classes with positives, weighted by w_c.

The paper (§4.1) weights "the contribution of each class to MAP@100" by how
common the class is among social media images, without the formula; the
weighting above, where each positive's term in its image's AP counts with
its class weight, is our reading of it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _weights(num_classes: int, class_weights: Optional[jnp.ndarray]) -> jnp.ndarray:
  if class_weights is None:
    return jnp.ones([num_classes], jnp.float32)
  return jnp.asarray(class_weights, jnp.float32)


def has_average_precision(labels: jnp.ndarray,
                          class_weights: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Per image, 1.0 if it has an AP (a positive of weight > 0), else 0.0."""
  weighted = (labels > 0) * _weights(labels.shape[-1], class_weights)
  return jnp.any(weighted > 0, axis=-1).astype(jnp.float32)


def average_precision_at_k(logits: jnp.ndarray, labels: jnp.ndarray, k: int,
                           class_weights: Optional[jnp.ndarray] = None) -> dict[str, jnp.ndarray]:
  """Each image's AP@k and its ranking, as defined in the module docstring.

  Returns [batch] arrays 'ap' (0 where undefined) and 'has_ap' (1.0 where
  defined), and [batch, k] arrays 'classes' (int32, best first), 'scores'
  (their logits, float32) and 'relevant' (1.0 for a positive).
  """
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  k = min(k, num_classes)
  positive = (labels > 0).astype(jnp.float32)
  weights = _weights(num_classes, class_weights)
  scores, classes = jax.lax.top_k(logits, k)
  relevant = jnp.take_along_axis(positive, classes, axis=-1)
  precision = jnp.cumsum(relevant, axis=-1) / jnp.arange(1, k + 1, dtype=jnp.float32)
  gained = jnp.sum(relevant * weights[classes] * precision, axis=-1)
  ideal = jnp.sum(jax.lax.top_k(positive * weights, k)[0], axis=-1)
  has_ap = ideal > 0
  ap = jnp.where(has_ap, gained / jnp.where(has_ap, ideal, 1.0), 0.0)
  return {'ap': ap, 'has_ap': has_ap.astype(jnp.float32), 'classes': classes,
          'scores': scores, 'relevant': relevant}


def per_class_average_precision(classes: np.ndarray, scores: np.ndarray, relevant: np.ndarray,
                                positives: np.ndarray) -> np.ndarray:
  """AP of each class over the pooled top-k predictions (module docstring); NaN without positives.

  `classes`, `scores`, `relevant`: [images, k] rankings in evaluation order;
  `positives`: [num_classes] positives per class in the whole split.
  """
  num_classes = len(positives)
  flat_classes = np.asarray(classes).ravel()
  # Stable sort: by class, then score descending; equal scores keep the evaluation order.
  order = np.lexsort((-np.asarray(scores, np.float64).ravel(), flat_classes))
  flat_classes = flat_classes[order]
  hit = np.asarray(relevant, np.float64).ravel()[order]
  starts = np.searchsorted(flat_classes, np.arange(num_classes))
  rank = np.arange(len(flat_classes)) - starts[flat_classes] + 1
  hits_before_group = np.concatenate([[0.0], np.cumsum(hit)])[starts]
  hits = np.cumsum(hit) - hits_before_group[flat_classes]
  gained = np.bincount(flat_classes, weights=hit * hits / rank, minlength=num_classes)
  positives = np.asarray(positives, np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(positives > 0, gained / positives, np.nan)


def weighted_class_mean(ap: np.ndarray, class_weights: Optional[np.ndarray] = None) -> float:
  """Σ w_c AP_c / Σ w_c over the classes with an AP (NaN if there are none)."""
  weights = np.ones_like(ap) if class_weights is None else np.asarray(class_weights, np.float64)
  defined = ~np.isnan(ap) & (weights > 0)
  if not defined.any():
    return float('nan')
  return float(np.sum(ap[defined] * weights[defined]) / np.sum(weights[defined]))


def load_class_weights(path: str | Path, class_names: Sequence[str]) -> np.ndarray:
  """Per-class weights from a JSON object {class name: weight ≥ 0}; unlisted classes get 0.

  Unknown class names and negative or non-finite weights are ValueErrors.
  """
  given = json.loads(Path(path).read_text(encoding='utf-8'))
  if not isinstance(given, dict):
    raise ValueError(f'{path} must hold a JSON object {{class name: weight}}.')
  index = {name: i for i, name in enumerate(class_names)}
  unknown = sorted(set(given) - set(index))
  if unknown:
    raise ValueError(f'{path} names {len(unknown)} class(es) the data set does not have: '
                     f'{", ".join(map(repr, unknown[:10]))}.')
  weights = np.zeros(len(class_names), np.float32)
  for name, weight in given.items():
    if not (isinstance(weight, (int, float)) and np.isfinite(weight) and weight >= 0):
      raise ValueError(f'{path}: the weight of {name!r} must be a finite number ≥ 0, '
                       f'got {weight!r}.')
    weights[index[name]] = weight
  return weights
