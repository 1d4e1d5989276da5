"""MAP@100 and per-class AP (xception_jax/multilabel.py): by hand, and against scikit-learn."""
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_score

from xception_jax.trainer import multilabel


def map_at_k(logits, labels, k=100, weights=None):
  out = {key: np.asarray(v) for key, v in
         multilabel.average_precision_at_k(logits, labels, k, weights).items()}
  return out['ap'], out['has_ap'], out


def hand_example():
  """120 classes, k = 100: ties, a positive ranked below 100, images without positives."""
  logits, labels = np.zeros((4, 120), np.float32), np.zeros((4, 120), np.float32)
  # Image 0: positives 0, 2, 110. Classes 1 and 2 tie at 4: class 1 (lower index) ranks first.
  # Class 110 (logit -10) ranks 120th, below the top 100: it adds nothing.
  logits[0, [0, 1, 2, 110]] = [5, 4, 4, -10]
  labels[0, [0, 2, 110]] = 1
  # Image 1: positive 3 ties with negative 0 at 2; 0 ranks first, so 3 is at rank 2.
  logits[1, [0, 3]] = 2
  labels[1, 3] = 1
  # Image 2 has no positives: no AP. Image 3: positive 5 ranked first.
  logits[3, 5] = 9
  labels[3, 5] = 1
  return logits, labels


def test_map100_by_hand():
  ap, has_ap, ranked = map_at_k(*hand_example())
  # Image 0: (1/1 at rank 1 + 2/3 at rank 3) / min(3 positives, 100) = 5/9.
  np.testing.assert_allclose(ap, [5 / 9, 1 / 2, 0, 1], rtol=1e-6)
  np.testing.assert_array_equal(has_ap, [1, 1, 0, 1])
  assert ap.sum() / has_ap.sum() == pytest.approx((5 / 9 + 1 / 2 + 1) / 3)  # MAP@100 = 37/54.
  np.testing.assert_array_equal(ranked['classes'][0, :4], [0, 1, 2, 3])
  np.testing.assert_array_equal(ranked['relevant'][0, :4], [1, 0, 1, 0])
  assert ranked['classes'].shape == (4, 100) and 110 not in ranked['classes'][0]


def test_weighted_map100_by_hand():
  weights = np.ones(120, np.float32)
  weights[[0, 110, 3, 5]] = [2, 3, 0.5, 0]
  ap, has_ap, _ = map_at_k(*hand_example(), weights=weights)
  # Image 0: (w0·1 + w2·2/3) / (w110 + w0 + w2, the 3 heaviest positives) = (8/3) / 6.
  # Image 1: w3·1/2 / w3. Image 3's only positive weighs 0: no AP.
  np.testing.assert_allclose(ap, [4 / 9, 1 / 2, 0, 0], rtol=1e-6)
  np.testing.assert_array_equal(has_ap, [1, 1, 0, 0])
  assert ap.sum() / has_ap.sum() == pytest.approx(17 / 36)


def test_more_positives_than_k_normalise_by_k():
  logits = np.array([[4., 3, 2, 1, 0], [4, 3, 2, 1, 0]], np.float32)
  labels = np.array([[1., 1, 1, 0, 0], [1, 0, 1, 1, 0]], np.float32)
  ap, _, _ = map_at_k(logits, labels, k=2)
  np.testing.assert_allclose(ap, [1.0, 0.5])  # (1 + 1) / 2 ; (1 + 0) / min(3, 2).


def test_per_class_ap_by_hand():
  logits = np.array([[3, 2, 1, -5], [1, 3, 2, -5], [2, 0, 2, -5]], np.float32)
  labels = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 1, 0]], np.float32)
  ap, _, ranked = map_at_k(logits, labels, k=2)
  np.testing.assert_allclose(ap, [0.5, 0.5, 0.5])  # Image 2: classes 0 and 2 tie, 0 first.
  per_class = multilabel.per_class_average_precision(
      ranked['classes'], ranked['scores'], ranked['relevant'], labels.sum(0))
  # Class 0: pooled (img 0, 3, pos), (img 2, 2, neg); img 1's class 0 is ranked 3rd: 1/2.
  # Class 1: (img 1, 3, pos), (img 0, 2, neg): 1. Class 2: (img 1, 2, neg), (img 2, 2, pos)
  # tie, earlier image first: (1/2) / 2 positives. Class 3 has no positives: NaN.
  np.testing.assert_allclose(per_class, [0.5, 1.0, 0.25, np.nan])
  assert multilabel.weighted_class_mean(per_class) == pytest.approx(7 / 12)
  assert multilabel.weighted_class_mean(per_class, np.array([1, 2, 1, 5])) == \
      pytest.approx((0.5 + 2 + 0.25) / 4)


def random_problem(seed=0, images=40, classes=130):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(images, classes)).astype(np.float32)  # No ties.
  density = rng.choice([0.0, 0.02, 0.1, 0.5, 0.9], size=(images, 1))  # Some with > 100.
  labels = (rng.random((images, classes)) < density).astype(np.float32)
  return logits, labels, rng


def test_map100_equals_sklearn_on_the_top100_truncation():
  logits, labels, _ = random_problem()
  ap, has_ap, _ = map_at_k(logits, labels)
  assert 0 < has_ap.sum() < len(labels) and (labels.sum(1) > 100).any()
  for i in range(len(labels)):
    n = labels[i].sum()
    if n == 0:
      assert has_ap[i] == 0
      continue
    top = np.argsort(-logits[i])[:100]
    hits = labels[i, top].sum()
    # sklearn's AP of the truncated list divides by the hits in it; AP@100 by min(n, 100).
    expected = average_precision_score(labels[i, top], logits[i, top]) * hits / min(n, 100) \
        if hits else 0.0
    assert ap[i] == pytest.approx(expected, abs=1e-6), i


def test_weighted_map100_equals_a_precision_score_loop():
  logits, labels, rng = random_problem(seed=1, images=16)
  weights = rng.choice([0.0, 0.5, 1.0, 4.0], size=labels.shape[1]).astype(np.float32)
  ap, has_ap, _ = map_at_k(logits, labels, weights=weights)
  for i in range(len(labels)):
    order = np.argsort(-logits[i])
    positive_weights = np.sort(weights[labels[i] > 0])[::-1]
    ideal = positive_weights[:100].sum()
    assert has_ap[i] == (ideal > 0)
    if not ideal:
      continue
    gained = 0.0
    for rank, c in enumerate(order[:100], 1):
      if labels[i, c]:
        predicted = np.isin(np.arange(labels.shape[1]), order[:rank]).astype(int)
        gained += weights[c] * precision_score(labels[i].astype(int), predicted)
    assert ap[i] == pytest.approx(gained / ideal, abs=1e-6), i


def test_per_class_ap_equals_sklearn():
  logits, labels, _ = random_problem(seed=2, images=60, classes=130)
  labels[:, 7] = 0  # A class without positives.
  _, _, ranked = map_at_k(logits, labels)
  per_class = multilabel.per_class_average_precision(
      ranked['classes'], ranked['scores'], ranked['relevant'], labels.sum(0))
  assert np.isnan(per_class[7])
  for c in range(labels.shape[1]):
    if not labels[:, c].any():
      continue
    # The pool: images that rank class c among their top 100.
    pooled = (ranked['classes'] == c).any(axis=1)
    hits = labels[pooled, c].sum()
    expected = (average_precision_score(labels[pooled, c], logits[pooled, c]) * hits /
                labels[:, c].sum()) if hits else 0.0
    assert per_class[c] == pytest.approx(expected, abs=1e-6), c
  # With k ≥ the number of classes every image is in every pool: plain sklearn AP per class.
  _, _, full = map_at_k(logits[:, :90], labels[:, :90], k=100)
  per_class = multilabel.per_class_average_precision(
      full['classes'], full['scores'], full['relevant'], labels[:, :90].sum(0))
  expected = [average_precision_score(labels[:, c], logits[:, c]) if labels[:, c].any()
              else np.nan for c in range(90)]
  np.testing.assert_allclose(per_class, expected, atol=1e-6)


def test_class_weights_file(tmp_path):
  path = tmp_path / 'weights.json'
  path.write_text(json.dumps({'cat': 2.5, 'dog': 0}))
  np.testing.assert_array_equal(multilabel.load_class_weights(path, ['ant', 'cat', 'dog']),
                                [0, 2.5, 0])
  path.write_text(json.dumps({'cow': 1}))
  with pytest.raises(ValueError, match="class\\(es\\) the data set does not have: 'cow'"):
    multilabel.load_class_weights(path, ['cat'])
  path.write_text(json.dumps({'cat': -1}))
  with pytest.raises(ValueError, match="weight of 'cat' must be a finite number"):
    multilabel.load_class_weights(path, ['cat'])
