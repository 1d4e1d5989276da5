"""`train_and_evaluate(config, workdir)`: the training job, sharded over every device."""
from __future__ import annotations

import functools
import gc
import json
import time
from pathlib import Path
from typing import Optional

import jax
import ml_collections
import numpy as np
from absl import logging

from xception_jax import models, weights
from xception_jax.weights import tree
from xception_jax.trainer import (distributed, optim, param_groups, resume, sharding, steps,
                                  validation)
from xception_jax.tools import model_table
from xception_jax.trainer.checkpoints import CheckpointWriteError, Checkpoints
from xception_jax.data import pipeline, preprocessing, sources
from xception_jax.trainer.evaluate import Evaluator, extra_sets
from xception_jax.trainer.metric_writers import MetricWriter, Progress, progress_line
from xception_jax.trainer.preemption import PreemptionWatcher
from xception_jax.trainer.state import (TrainState, build_model, create_train_state,
                                        init_from_directory, step_compiler_options,
                                        with_init_from_model)
from xception_jax.trainer.workdir_lock import held_by_process_zero

BATCH_NORM_SCOPES = ('device', 'global')
TASK_FILE = 'task.json'  # {'multilabel': bool}: how the model's outputs read (predict).


def bn_groups(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
  """Slices of the global batch with their own BN statistics: one per device, or one."""
  if config.batch_norm not in BATCH_NORM_SCOPES:
    raise ValueError(f"batch_norm must be 'device' or 'global', got {config.batch_norm!r}.")
  return mesh.devices.size if config.batch_norm == 'device' else 1


def augmentation(config: ml_collections.ConfigDict) -> preprocessing.Augmentation:
  a = config.augment
  return preprocessing.Augmentation(
      min_object_covered=a.min_object_covered, aspect_ratio_range=tuple(a.aspect_ratio_range),
      area_range=tuple(a.area_range), flip=a.flip, color_distortion=a.color_distortion)


class Setup:
  """What a run derives from its config before the first step (no device work yet).

  `source` replaces the config's data set (the benchmarks' synthetic one).
  """

  def __init__(self, config: ml_collections.ConfigDict,
               source: Optional[sources.Source] = None):
    self.config = config
    self.mesh = sharding.make_mesh()
    self.local_batch = sharding.check_batch_size(config.batch_size, self.mesh)
    self.source = source or sources.source_for(config)
    self.num_train = self.source.split_size(config.train_split)
    self.steps_per_epoch = self.num_train // config.batch_size
    if self.steps_per_epoch == 0:
      raise ValueError(f'batch_size {config.batch_size} exceeds the {self.num_train} training '
                       f'examples of {config.dataset}; lower batch_size.')
    self.num_steps = optim.total_steps(config, self.steps_per_epoch)
    self.model = build_model(config, self.source.num_classes)
    self.compiler_options = step_compiler_options(config, self.model)
    self.extra_sets = extra_sets(config, self.source.num_classes)
    self.schedule = optim.learning_rate_schedule(config, self.steps_per_epoch)
    self.tx = optim.optimizer(config, self.schedule)
    if self.source.multilabel and config.label_smoothing:
      raise ValueError(f'{config.dataset} is multi-label (sigmoid cross-entropy): set '
                       'label_smoothing to 0.')
    self.step_config = steps.StepConfig(
        num_classes=self.source.num_classes, weight_decay=config.weight_decay,
        label_smoothing=config.label_smoothing, aux_loss_weight=config.aux_loss_weight,
        ema_decay=config.ema_decay, ema_warmup=config.ema_warmup,
        bn_groups=bn_groups(config, self.mesh), multilabel=self.source.multilabel,
        freeze=config.freeze, frozen_norms=self.frozen_norms())

  def frozen_norms(self) -> frozenset:
    """The batch norms that `freeze` freezes (they run in inference mode)."""
    if not self.config.freeze:
      return frozenset()
    template = tree.variable_template(self.model, self.config.image_size)
    return param_groups.frozen_norms(template, self.config.freeze)

  @functools.cached_property
  def initial_state_fn(self):
    """rng, pretrained variables (or None) → step-0 TrainState.

    One function object for the abstract state and the jitted initialisation, so that
    JAX traces the model's initialisation once for both.
    """
    return functools.partial(create_train_state, self.model, self.tx, self.config.image_size,
                             pretrained_name=self.config.get('init_from') or 'pretrained weights')

  def abstract_state(self) -> TrainState:
    """The state's shapes, dtypes and shardings, without computing it."""
    rng = jax.random.PRNGKey(self.config.seed)
    pretrained = self.pretrained_shapes()
    abstract = jax.eval_shape(self.initial_state_fn, rng, pretrained)
    shardings = sharding.state_shardings(abstract, self.mesh)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)

  def pretrained_shapes(self):
    if not self.config.get('init_from'):
      return None
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.pretrained())

  @functools.cache
  def pretrained(self):
    return weights.load_variables(init_from_directory(self.config))

  def init_state(self, abstract: TrainState) -> TrainState:
    """A fresh (or pretrained-initialised) state, built directly with its shardings."""
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    pretrained = self.pretrained() if self.config.get('init_from') else None
    init = jax.jit(self.initial_state_fn, out_shardings=shardings,
                   compiler_options=models.run_once_compiler_options())
    return init(jax.random.PRNGKey(self.config.seed), pretrained)

  def train_steps(self, abstract: TrainState, num_steps: int):
    """`num_steps` jitted training steps in one call, on their batches stacked along a
    leading axis: state placed by rule, batches split over devices, metrics stacked."""
    shardings = jax.tree.map(lambda a: a.sharding, abstract)
    step = functools.partial(steps.train_step, model=self.model, tx=self.tx,
                             schedule=self.schedule, config=self.step_config)
    return jax.jit(steps.unrolled(step, num_steps),
                   in_shardings=(shardings, sharding.data_sharding(self.mesh, stacked=True)),
                   out_shardings=(shardings, sharding.replicated(self.mesh)),
                   donate_argnums=0,
                   compiler_options=self.compiler_options)

  def call_length(self, step: int) -> int:
    """Steps in the call that follows `step`: up to `steps_per_call`, ending early at the
    end of training and wherever logging, evaluation or a checkpoint is due."""
    c = self.config
    length = min(c.steps_per_call, self.num_steps - step)
    for every in (c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps):
      if every:
        length = min(length, every - step % every)
    return length

  def train_stream(self) -> pipeline.TrainStream:
    c = self.config
    return pipeline.TrainStream(
        self.source, c.train_split, self.local_batch, c.image_size, c.seed,
        self.steps_per_epoch, jax.process_index(), jax.process_count(),
        shuffle_buffer=c.shuffle_buffer, augmentation=augmentation(c),
        bad_images=c.bad_images)


def write_run_files(workdir: Path, config: ml_collections.ConfigDict, setup: Setup) -> None:
  """The resolved config, class names, label type and a parameter overview, in the workdir."""
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  (workdir / 'class_names.json').write_text(json.dumps(list(setup.source.class_names)))
  (workdir / TASK_FILE).write_text(json.dumps({'multilabel': setup.source.multilabel}))
  overview = model_table.format_summary(config.model, setup.model, config.image_size, depth=1)
  (workdir / 'model_summary.txt').write_text(overview + '\n')
  logging.info('Model:\n%s', overview)
  logging.info('%d training examples, %d steps per epoch, %d steps, global batch %d over %d '
               'devices (%d processes)', setup.num_train, setup.steps_per_epoch, setup.num_steps,
               config.batch_size, setup.mesh.devices.size, jax.process_count())


def check_finite(config: ml_collections.ConfigDict, records: list[tuple[int, dict]],
                 last_checkpoint: Optional[int]) -> list[int]:
  """Steps whose loss or gradient was non-finite; under 'stop' such a step is an error."""
  bad = [step for step, metrics in records if not metrics['finite']]
  if bad and config.nonfinite_steps == 'stop':
    step, metrics = next(r for r in records if r[0] == bad[0])
    raise FloatingPointError(
        f'Non-finite loss or gradient at step {step} (loss {metrics["loss"]}); the state was '
        f'not updated and the checkpoints are intact (latest: step {last_checkpoint}). Lower '
        f'the learning rate or set --config.nonfinite_steps=skip.')
  if bad:
    logging.warning('Skipped %d non-finite step(s): %s', len(bad), bad)
  return bad


def stack_batches(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """The batches along a new leading axis; one batch as a view, without a copy."""
  if len(batches) == 1:
    return {k: v[None] for k, v in batches[0].items()}
  return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


def headline(results: dict[str, float], top_k: int) -> str:
  """The final evaluation in words: top-1/top-5, or MAP@k and per-class mAP (multi-label)."""
  if 'top1_ema' in results:
    return (f'top-1 {100 * results["top1_ema"]:.2f}% (EMA), {100 * results["top1"]:.2f}% '
            f'(raw), top-5 {100 * results["top5_ema"]:.2f}% (EMA)')
  return (f'MAP@{top_k} {100 * results[f"map{top_k}_ema"]:.2f}% (EMA), '
          f'{100 * results[f"map{top_k}"]:.2f}% (raw), per-class mAP '
          f'{100 * results["class_map_ema"]:.2f}% (EMA)')


def mean_metrics(records: list[tuple[int, dict]]) -> dict[str, float]:
  """Averages of the finite steps' metrics (NaN when none was finite)."""
  finite = [m for _, m in records if m['finite']] or [m for _, m in records]
  return {k: float(np.mean([m[k] for m in finite])) for k in finite[0] if k != 'finite'}


def exempt_from_collection() -> None:
  """Takes every object Python tracks now out of its cycle collector's scans, until
  `gc.unfreeze()` (`train_and_evaluate` calls it when it returns).

  Called once a step is compiled: the modules, jitted programs and caches made so far live
  for the whole run, and a full collection that scanned them took 0.35-0.48 s of the main
  thread every eight steps of Inception-ResNet-v2 on a 2-core host, a core taken from
  XLA's threads mid-step (docs/performance.md). Objects made later are collected as usual.
  """
  gc.freeze()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains, evaluates and checkpoints under `workdir`, resuming from its latest checkpoint.

  Returns the final evaluation metrics ('top1', 'top1_ema', ...; multi-label data:
  'map100', 'map100_ema', 'class_map', ...), or
  {'preempted_at_step': step} when a SIGTERM stopped the run after a checkpoint.
  Raises FloatingPointError at a non-finite step when `nonfinite_steps='stop'`.
  """
  config = with_init_from_model(config)
  validation.validate(config)
  distributed.initialize(config)
  if config.get('compilation_cache_dir'):
    jax.config.update('jax_compilation_cache_dir', config.compilation_cache_dir)
  workdir_path = Path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  with held_by_process_zero(workdir_path, config.workdir_lock_stale_seconds):
    setup = Setup(config)
    abstract = setup.abstract_state()
    checkpoints = Checkpoints(workdir_path / 'checkpoints', keep=config.keep_checkpoints,
                              async_save=config.async_checkpoints)
    writer = watcher = None
    try:
      # Before anything is written: a changed config or another state's checkpoint stops here.
      latest = checkpoints.latest()
      changes = resume.check(workdir_path, config, latest) if latest is not None else {}
      state = checkpoints.restore_latest(abstract)
      writer = MetricWriter(workdir_path, enabled=jax.process_index() == 0)
      watcher = PreemptionWatcher()
      return _train(config, workdir_path, setup, abstract, state, changes, checkpoints, writer,
                    watcher)
    except OSError as e:  # A full disk or an unwritable workdir: where, what, and what is safe.
      if isinstance(e, CheckpointWriteError) or not e.filename:
        raise
      raise OSError(f'Writing {e.filename} failed ({e.strerror}); '
                    f'{checkpoints.latest_intact()}.') from None
    finally:
      gc.unfreeze()   # The run's objects are the collector's again (see exempt_from_collection).
      if watcher:
        watcher.close()
      checkpoints.close()  # Waits for asynchronous saves: what is on disk is complete.
      if writer:
        writer.close()


def _train(config, workdir_path, setup, abstract, state, changes, checkpoints, writer, watcher):
  is_main = jax.process_index() == 0
  if state is None:
    state = setup.init_state(abstract)
  if is_main:
    resume.record(workdir_path, int(jax.device_get(state.step)), changes)
    write_run_files(workdir_path, config, setup)
  train_calls = {}  # Steps per call → its jitted function (at most steps_per_call of them).
  evaluator = Evaluator(setup.model, setup.source, config, setup.mesh)
  extra_evaluators = {name: Evaluator(setup.model, source, config, setup.mesh, split)
                      for name, source, split in setup.extra_sets}
  start = int(jax.device_get(state.step))
  stream = setup.train_stream()
  batches = stream.batches(start)
  progress = Progress(setup.num_steps, config.batch_size, start)
  started = time.monotonic()
  records = []  # (first step, the call's per-step device metrics) since the last report.

  def evaluate(step):
    variable_sets = {'': state.variables(), '_ema': state.variables(ema=True)}
    results = evaluator(variable_sets)
    writer.write(step, {f'eval/{k}': v for k, v in results.items()})
    if is_main:
      evaluator.write_per_class_ap(workdir_path, step)
      logging.info('eval at step %d: %s', step, progress_line(step, setup.num_steps, results))
    for name, extra in extra_evaluators.items():
      results[name] = extra(variable_sets)
      writer.write(step, {f'eval_{name}/{k}': v for k, v in results[name].items()})
      if is_main:
        logging.info('eval on %s at step %d: %s', name, step,
                     progress_line(step, setup.num_steps, results[name]))
    progress.update(step)  # Evaluation time does not count as training throughput.
    return results

  def report(step):
    fetched = [(first + i, metrics) for first, per_step in jax.device_get(records)
               for i, metrics in enumerate(per_step)]
    records.clear()
    skipped = check_finite(config, fetched, checkpoints.latest())
    train_metrics = {**mean_metrics(fetched), **progress.update(step)}
    if skipped:
      train_metrics['skipped_steps'] = len(skipped)
    if stream.skipped.count:  # Images that did not decode (bad_images='skip'), this process's.
      train_metrics['skipped_images'] = stream.skipped.count
    writer.write(step, {f'train/{k}': v for k, v in train_metrics.items()})
    if is_main:
      logging.info('%s', progress_line(step, setup.num_steps, train_metrics))

  step = start
  while step < setup.num_steps:
    length = setup.call_length(step)
    compiling = length not in train_calls
    if compiling:
      train_calls[length] = setup.train_steps(abstract, length)
    stacked = stack_batches([next(batches) for _ in range(length)])
    state, metrics = train_calls[length](state, sharding.global_batch(stacked, setup.mesh,
                                                                      stacked=True))
    if compiling:
      exempt_from_collection()
    records.append((step + 1, metrics))
    step += length
    stop = watcher.should_stop(step)
    checkpoint_due = stop or (config.checkpoint_every_steps and
                              step % config.checkpoint_every_steps == 0)
    if checkpoint_due or stop or step % config.log_every_steps == 0 or step == setup.num_steps:
      report(step)  # Also the finiteness check that guards every checkpoint.
    if config.eval_every_steps and step % config.eval_every_steps == 0 and not stop and \
        step != setup.num_steps:
      evaluate(step)
    if checkpoint_due:
      checkpoints.save(state, force=True)
    if stop:
      checkpoints.wait()
      print(f'Process {jax.process_index()} preempted at step {step}: checkpoint saved in '
            f'{checkpoints.directory}; rerun the same command to resume.', flush=True)
      return {'preempted_at_step': step}

  results = evaluate(setup.num_steps)
  checkpoints.save(state, force=True)
  checkpoints.wait()  # A failed final save is reported before the run says it finished.
  if is_main:
    elapsed = time.monotonic() - started
    line = (f'Finished {config.model} on {config.dataset}: step {setup.num_steps}, '
            f'{elapsed:.0f} s this run; eval {headline(results, evaluator.top_k)} '
            f'on {results["count"]:.0f} examples; workdir {workdir_path}')
    (workdir_path / 'final_metrics.json').write_text(
        json.dumps({'step': setup.num_steps, **results}, indent=2))
    print(line, flush=True)
  return results
