"""The training losses: softmax cross-entropy (single-label) and sigmoid cross-entropy
(multi-label), per example."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, num_classes: int,
                  label_smoothing: float = 0.0) -> jnp.ndarray:
  """Per-example softmax cross-entropy with integer labels and optional smoothing."""
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def sigmoid_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Per-example sigmoid cross-entropy of multi-hot labels, summed over the classes.

  Summed, not averaged, over classes: an example's loss stays on the scale of a
  softmax cross-entropy whatever the number of classes (17,000 for JFT), so
  the weight decay keeps its meaning relative to the loss.
  """
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                            labels.astype(jnp.float32)).sum(axis=-1)
