"""The pure training and evaluation steps (jit them with shardings in the loop)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax

from xception_jax.trainer import losses
from xception_jax.trainer import multilabel as multilabel_metrics
from xception_jax.trainer import optim, param_groups
from xception_jax.trainer.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The static hyper-parameters a training step needs."""
  num_classes: int
  weight_decay: float = 0.0
  label_smoothing: float = 0.0
  aux_loss_weight: float = 0.4
  ema_decay: float = 0.9999
  ema_warmup: bool = True
  # BN statistics over this many equal slices of the global batch (one per device
  # for per-device statistics; 1 for statistics over the whole global batch).
  bn_groups: int = 1
  # Multi-hot labels, per-class sigmoid cross-entropy (JFT); else class indices, softmax.
  multilabel: bool = False
  # Transfer learning (param_groups.py): the `freeze` pattern, and the batch norms it
  # freezes, which run in inference mode.
  freeze: str = ''
  frozen_norms: frozenset[tuple[str, ...]] = frozenset()


def example_losses(logits: jnp.ndarray, labels: jnp.ndarray, config: StepConfig) -> jnp.ndarray:
  """Per-example loss: sigmoid cross-entropy (multi-label) or softmax cross-entropy."""
  if config.multilabel:
    return losses.sigmoid_cross_entropy(logits, labels)
  return losses.cross_entropy(logits, labels, config.num_classes, config.label_smoothing)


def top1_correct(logits: jnp.ndarray, labels: jnp.ndarray, multilabel: bool) -> jnp.ndarray:
  """Per example: the top-scoring class is the label (multi-label: is one of the labels)."""
  top = jnp.argmax(logits, -1)
  if multilabel:
    return jnp.take_along_axis(labels, top[:, None], axis=-1)[:, 0] > 0
  return top == labels


def forward_train(model, params, batch_stats, images, rng, bn_groups: int,
                  frozen_norms: frozenset = frozenset()):
  """Training-mode outputs and new BN statistics, with BN over `bn_groups` batch slices.

  Each slice is normalised by its own statistics (as separate replicas would);
  the moving averages advance by the mean of the slices' statistics. The
  batch norms at `frozen_norms` run in inference mode.
  """
  variables = {'params': params, 'batch_stats': batch_stats}

  def apply(x, key):
    with param_groups.norms_in_inference_mode(frozen_norms):
      return model.apply(variables, x, train=True, rngs={'dropout': key},
                         mutable=['batch_stats'])

  if bn_groups == 1:
    outputs, state = apply(images, rng)
    return outputs, state['batch_stats']
  slices = images.reshape(bn_groups, images.shape[0] // bn_groups, *images.shape[1:])
  outputs, state = jax.vmap(apply)(slices, jax.random.split(rng, bn_groups))
  outputs = jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:]), outputs)
  return outputs, jax.tree.map(lambda s: s.mean(axis=0), state['batch_stats'])


def _either(condition: jnp.ndarray, new: jnp.ndarray, old: jnp.ndarray) -> jnp.ndarray:
  """jnp.where(condition, new, old) for a scalar condition and arrays of one shape.

  Written with lax.select: jnp.where traces as a program nested in the step for each leaf of
  the state, which every run then traces and lowers before its first step; XLA compiles both
  forms to the same operations.
  """
  dtype = jnp.result_type(new, old)   # jnp.where's promotion (float64 tests mix in float32).
  return lax.select(lax.broadcast(condition, jnp.shape(new)),
                    lax.convert_element_type(new, dtype), lax.convert_element_type(old, dtype))


def train_step(state: TrainState, batch: dict[str, jnp.ndarray], *, model,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               config: StepConfig) -> tuple[TrainState, dict[str, jnp.ndarray]]:
  """One optimizer step on a global batch {'image', 'label'}; returns new state and metrics.

  Metrics: loss, cross_entropy, learning_rate, grad_norm (of the trainable
  parameters), finite, and 'accuracy' (single-label top-1) or 'precision_at_1'
  (multi-label: the top class is a label).
  """
  labels = batch['label']
  dropout_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    outputs, batch_stats = forward_train(model, params, state.batch_stats, batch['image'],
                                         dropout_rng, config.bn_groups, config.frozen_norms)
    logits, aux_logits = outputs if isinstance(outputs, tuple) else (outputs, None)
    cross_entropy = example_losses(logits, labels, config).mean()
    loss = cross_entropy + optim.l2_penalty(params, config.weight_decay)
    if aux_logits is not None:
      loss += config.aux_loss_weight * example_losses(aux_logits, labels, config).mean()
    return loss, (logits, batch_stats, cross_entropy)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, batch_stats, cross_entropy)), grads = grad_fn(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = optim.ema_decay(state.step, config.ema_decay, config.ema_warmup)
  updated = state.replace(
      params=params, batch_stats=batch_stats, opt_state=opt_state,
      ema_params=optim.ema_update(state.ema_params, params, decay),
      ema_batch_stats=optim.ema_update(state.ema_batch_stats, batch_stats, decay))
  grad_norm = optax.global_norm(param_groups.trainable(grads, config.freeze))
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  # A non-finite step leaves the state as it was (the batch still counts as consumed), so
  # a NaN can never reach the parameters or a checkpoint; the loop decides to stop or skip.
  new_state = jax.tree.map(functools.partial(_either, finite), updated, state)
  metrics = {
      'loss': loss,
      'cross_entropy': cross_entropy,
      'precision_at_1' if config.multilabel else 'accuracy':
          jnp.mean(top1_correct(logits, labels, config.multilabel)),
      'learning_rate': schedule(state.step),
      'grad_norm': grad_norm,
      'finite': finite.astype(jnp.float32),
  }
  return new_state.replace(step=state.step + 1), metrics


def unrolled(step_fn: Callable[[Any, Any], tuple[Any, Any]], num_steps: int
             ) -> Callable[[Any, Any], tuple[Any, tuple[Any, ...]]]:
  """`step_fn(state, batch) -> (state, metrics)` run `num_steps` times as one program.

  The returned function takes the batches stacked along a new leading axis
  and returns the last state and a tuple of each step's metrics: the same
  results as `num_steps` calls, in one dispatch. The steps are unrolled rather
  than a `lax.scan`, whose loop ran 20× slower on XLA's CPU backend; on CPU one
  program per several steps maps its temporary memory once per call instead of
  once per step (benchmarks/RESULTS.md). The metrics stay scalars: stacked into
  arrays on the device, they made XLA's CPU compiler take 4× as long and twice
  the memory for the Inception models' steps (docs/performance.md).
  """
  def run(state, batches):
    metrics = []
    for i in range(num_steps):
      state, step_metrics = step_fn(state, jax.tree.map(lambda b: b[i], batches))
      metrics.append(step_metrics)
    return state, tuple(metrics)
  return run


def classification_counts(logits: jnp.ndarray, labels: jnp.ndarray,
                          mask: jnp.ndarray, num_classes: int) -> dict[str, jnp.ndarray]:
  """Masked sums: correct top-1, correct top-5, cross-entropy, scored examples.

  `labels` are class indices, or multi-hot sets of right answers (ImageNet-ReaL):
  a prediction is then right when it is in the example's set, an example with
  an empty set is not scored, and there is no loss.
  """
  top = jax.lax.top_k(logits, min(5, num_classes))[1]
  if labels.ndim == 2:
    hits = jnp.take_along_axis(labels, top, axis=-1) > 0
    mask = mask * (jnp.sum(labels, axis=-1) > 0)
    return {'top1': jnp.sum(hits[:, 0] * mask), 'top5': jnp.sum(jnp.any(hits, -1) * mask),
            'scored': jnp.sum(mask)}
  hits = top == labels[:, None]
  return {'top1': jnp.sum(hits[:, 0] * mask), 'top5': jnp.sum(jnp.any(hits, -1) * mask),
          'loss': jnp.sum(losses.cross_entropy(logits, labels, num_classes) * mask),
          'scored': jnp.sum(mask)}


def multilabel_counts(logits: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray, top_k: int,
                      class_weights: Optional[jnp.ndarray] = None
                      ) -> tuple[dict[str, jnp.ndarray], dict[str, jnp.ndarray]]:
  """Masked sums (loss; 'ap_sum' of AP@top_k, see xception_jax.trainer.multilabel) and the rankings.

  Rankings: each example's top-k 'classes', 'scores' and 'relevant' ([batch, k]).
  """
  ranked = multilabel_metrics.average_precision_at_k(logits, labels, top_k, class_weights)
  sums = {'loss': jnp.sum(losses.sigmoid_cross_entropy(logits, labels) * mask),
          'ap_sum': jnp.sum(ranked['ap'] * mask)}
  return sums, {k: ranked[k] for k in ('classes', 'scores', 'relevant')}


def eval_step(variable_sets: dict[str, Any], batch: dict[str, jnp.ndarray], *, model,
              num_classes: int, multilabel: bool = False, top_k: int = 100,
              class_weights: Optional[jnp.ndarray] = None
              ) -> tuple[dict[str, jnp.ndarray], dict[str, Any]]:
  """Sums for one padded batch {'image', 'label', 'mask'}, for each named set of variables.

  Returns (sums, rankings). Sums: 'count' and '<metric><suffix>' for each
  `suffix: variables` pair, e.g. {'': raw, '_ema': averaged} gives top1, top5,
  loss, top1_ema, ... Multi-label: loss<suffix> and ap_sum<suffix> (AP@top_k
  summed over the batch), 'has_ap' (examples with an AP) and 'positives'
  ([num_classes] positives per class); rankings then holds the batch's 'mask'
  and, for each suffix, the examples' top-k rankings (per-class AP needs them
  all). Single-label rankings are empty.
  """
  mask = batch['mask']
  sums, rankings = {'count': jnp.sum(mask)}, {}
  if multilabel:
    labelled = multilabel_metrics.has_average_precision(batch['label'], class_weights)
    sums['has_ap'] = jnp.sum(labelled * mask)
    sums['positives'] = jnp.sum((batch['label'] > 0) * mask[:, None], axis=0)
    rankings['mask'] = mask
  for suffix, variables in variable_sets.items():
    logits = model.apply(variables, batch['image'], train=False)
    if multilabel:
      counts, rankings[suffix] = multilabel_counts(logits, batch['label'], mask, top_k,
                                                   class_weights)
    else:
      counts = classification_counts(logits, batch['label'], mask, num_classes)
    sums.update({f'{k}{suffix}': v for k, v in counts.items()})
  return sums, rankings
