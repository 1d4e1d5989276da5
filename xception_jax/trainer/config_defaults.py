"""Every training option with its default; experiment configs in configs/ override these.

Durations are named by unit: *_steps, *_epochs, *_examples.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Defaults: the Xception ImageNet recipe's optimizer settings on a 1-step placeholder run."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Model: any name of models.list_models(); model_kwargs are its module attributes.
  # '' takes the model and its options from init_from's converted weights.
  c.model = 'xception'
  c.model_kwargs = ml_collections.ConfigDict()
  # How the model's operations are computed (models.Execution; never what they compute):
  # 'auto' picks the measured fastest form per backend, 'xla' is XLA's own operation.
  # remat=True recomputes each block's activations in the backward pass (less memory).
  c.execution = ml_collections.ConfigDict(dict(
      depthwise='auto', pointwise='auto', conv='auto', pool='auto', avg_pool='auto', norm='auto',
      residual='auto', remat=False))
  # Compute dtype (parameters stay float32): 'float32', 'bfloat16', or 'auto': bfloat16 on GPU
  # and TPU, float32 on CPU (trainer/state.py).
  c.dtype = 'auto'
  # XLA compiler options over the model's defaults (models.compiler_options), e.g.
  # 'xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED'; comma-separated.
  c.compiler_options = ''
  # Weights to start from: a pretrained tag (weights.list_pretrained()) or a converted-weights
  # directory (python -m xception_jax.convert); a classifier of another size starts fresh.
  c.init_from = ''
  # Transfer learning (trainer/param_groups.py): parameters to keep fixed ('' none, 'backbone',
  # or a regular expression over parameter paths; their batch norms run in inference mode),
  # and learning-rate multipliers per group, e.g. 'backbone=0.1'.
  c.freeze = ''
  c.lr_multipliers = ''

  # Data: a TFDS name, 'folder:PATH' (PATH/<split>/<class>/<image>), 'multilabel:PATH'
  # (PATH/<split>.jsonl label files), or bundled 'digits' / 'digits_multilabel'.
  c.dataset = 'imagenet2012'
  c.label_key = 'label'          # TFDS label feature: ClassLabel, or multi-label (sequence/multi-hot).
  c.data_dir = ml_collections.config_dict.placeholder(str)    # TFDS data_dir / digits cache.
  c.manual_dir = ml_collections.config_dict.placeholder(str)  # ImageNet's downloaded archives.
  c.train_split = 'train'
  c.eval_split = 'validation'
  # More evaluation sets, '[NAME=]DATASET[@SPLIT],...' (e.g. 'imagenet2012_real,imagenet_v2';
  # the split defaults to the set's own), evaluated beside eval_split, metrics eval_<NAME>/.
  c.eval_datasets = ''
  c.image_size = 299
  c.eval_crop_fraction = 0.875
  c.eval_resize = 'bilinear'     # 'bilinear' (slim, Keras) or 'bicubic' (timm's evaluation).
  c.shuffle_buffer = 16_384
  c.augment = ml_collections.ConfigDict(dict(
      min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.05, 1.0),
      flip=True, color_distortion='fast'))

  # Batch and duration. batch_size is global (all devices of all processes).
  c.batch_size = 2048
  c.eval_batch_size = 0          # 0: same as batch_size.
  c.num_epochs = 1.0
  c.total_steps = 0              # > 0 overrides num_epochs.
  # Training steps per jitted call (Keras' steps_per_execution): the same steps in one
  # program, which pays on CPU for long runs (docs/performance.md). A call also ends where
  # logging, evaluation or a checkpoint is due, so set those to multiples of it.
  c.steps_per_call = 1

  # Optimizer and schedule.
  c.optimizer = 'sgd'            # 'sgd', 'rmsprop' (TF form), 'adam', 'adamw'.
  c.learning_rate = 0.045
  c.reference_batch_size = 0     # > 0: learning rate × batch_size / reference_batch_size.
  c.momentum = 0.9
  c.nesterov = False
  c.rmsprop_decay = 0.9
  c.rmsprop_epsilon = 1.0
  c.adamw_weight_decay = 0.0
  c.lr_schedule = 'exponential'  # Staircase decay by lr_decay_rate, or 'cosine' to 0 at the end.
  c.lr_decay_rate = 0.94
  c.lr_decay_epochs = 2.0
  c.lr_decay_examples = 0        # > 0: decay every this many examples instead of epochs.
  c.warmup_epochs = 0.0

  # Regularisation and loss.
  c.weight_decay = 1e-5          # L2 on conv and dense kernels: wd/2 · Σ‖k‖².
  c.label_smoothing = 0.0
  c.grad_clip_norm = 0.0         # > 0: clip gradients by global norm.
  c.aux_loss_weight = 0.4        # For models that return auxiliary logits in training.
  # BatchNorm statistics per device ('device', like the paper's TF replicas, and no
  # cross-device traffic in ~100 BN layers per step) or over the global batch ('global').
  c.batch_norm = 'device'

  # Polyak averaging of params and BN statistics (what the paper evaluates).
  c.ema_decay = 0.9999
  c.ema_warmup = True

  # Multi-label evaluation (trainer/multilabel.py): MAP@map_top_k over each image's top
  # predictions; class_weights: a JSON file {class name: weight} (FastEval14k-style weights).
  c.map_top_k = 100
  c.class_weights = ''

  # Logging, evaluation, checkpoints.
  c.log_every_steps = 100
  c.eval_every_steps = 0         # 0: evaluate at the end only.
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.eval_only = False            # Evaluate init_from, or the workdir's latest checkpoint.
  c.nonfinite_steps = 'stop'     # A NaN/inf loss or gradient: 'stop' with an error, or 'skip'.
  c.compilation_cache_dir = ''   # Persistent XLA cache: restarts after preemption compile fast.

  # Workdir safety (trainer/resume.py, trainer/workdir_lock.py). A resumed run must keep
  # every field that changes what a step means (batch size, data, schedule, seed, ...)
  # unless this lists it, e.g. 'batch_size,learning_rate'; fields that change the
  # checkpoint's structure (model, model_kwargs, optimizer, ...) are never allowed.
  c.resume_with_changes = ''
  # A lock file of a run on another host that was not refreshed for this long is stale.
  c.workdir_lock_stale_seconds = 600.0
  # An image file that does not decode: 'error' (names the file) or 'skip' (counted).
  c.bad_images = 'error'

  # Multi-process runs (jax.distributed): set enabled on every process.
  c.distributed = ml_collections.ConfigDict(dict(
      enabled=False,
      coordinator_address=ml_collections.config_dict.placeholder(str),
      num_processes=ml_collections.config_dict.placeholder(int),
      process_id=ml_collections.config_dict.placeholder(int)))
  return c


def local_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to a seconds-long smoke run on the bundled digits (CPU-friendly).

  The recipe (optimizer, schedule, regularisation) stays; the model becomes
  its `tiny_options` variant at its smallest input size.
  """
  from xception_jax import models
  model_class = models.model_class(c.model)
  c.dataset = 'digits'
  c.train_split, c.eval_split = 'train', 'test'
  c.image_size = model_class.min_input_size
  c.batch_size = 16
  c.total_steps = 4
  c.log_every_steps = 2
  c.checkpoint_every_steps = 2
  c.reference_batch_size = 0
  c.model_kwargs.update(model_class.tiny_options)
  return c


QUICK_IMAGE_SIZE = 75  # The smallest input every registered model accepts.
# ImageNet's 0.045 is meant for ~2,000-image batches; at 32 Inception-V3 diverges with it.
QUICK_MAX_LEARNING_RATE = 0.01
SIZE_VARIANTS = ('local', 'quick')


def quick_variant(c: ml_collections.ConfigDict,
                  dataset: str = 'digits') -> ml_collections.ConfigDict:
  """Shrinks a config to a quickstart-size run on bundled digits, with a training profile.

  Minutes on 2 CPU cores: the model's `tiny_options` at 75 px (so every model
  compares at one size), quickstart's data settings (`dataset` 'digits' or
  'digits_multilabel', milder crops, no flips, batch 32, 8 epochs) and an
  evaluation every epoch (45 steps) to plot. The recipe keeps its optimizer,
  decay rate, regularisation and dropout, and its learning rate up to 0.01;
  its decay interval (2 ImageNet epochs, 3M JFT examples: longer than the
  whole run) becomes one epoch; the averaging decay is 0.99 and the BN
  momentum 0.9, so that both follow a run of a few hundred steps.
  """
  from xception_jax import models
  model_class = models.model_class(c.model)
  c.dataset = dataset
  c.train_split, c.eval_split = 'train', 'test'
  c.image_size = QUICK_IMAGE_SIZE
  c.augment.area_range = (0.6, 1.0)
  c.augment.min_object_covered = 0.6
  c.augment.flip = False
  c.batch_size = 32
  c.num_epochs = 8
  c.total_steps = 0
  c.reference_batch_size = 0
  c.learning_rate = min(c.learning_rate, QUICK_MAX_LEARNING_RATE)
  c.lr_decay_epochs, c.lr_decay_examples = 1, 0
  c.ema_decay = 0.99
  c.batch_norm = 'global'
  c.log_every_steps = 15
  c.eval_every_steps = 45          # One epoch of the 1,442 digits (or 1,440 digit grids).
  c.checkpoint_every_steps = 225
  c.keep_checkpoints = 2
  c.model_kwargs.update(model_class.tiny_options)
  # BN moving averages at momentum 0.99 lag by ~100 steps, a third of the run: evaluations
  # would measure the lag, not the model.
  c.model_kwargs.bn_momentum = 0.9
  return c


def split_variant(variant: str, choices) -> tuple[list[str], str]:
  """'no_residual,quick' → (['no_residual'], 'quick'): the variant's words and its size word.

  Words are separated by commas; the size word is 'local', 'quick' or ''.
  Words outside `choices` and the size words are a ValueError that lists them.
  """
  words = [w.strip() for w in variant.split(',') if w.strip()]
  sizes = [w for w in words if w in SIZE_VARIANTS]
  words = [w for w in words if w not in SIZE_VARIANTS]
  unknown = [w for w in words if w not in choices]
  if unknown or len(sizes) > 1:
    raise ValueError(f'Unknown config variant {variant!r}: choose from '
                     f'{", ".join(choices)}, plus at most one of {", ".join(SIZE_VARIANTS)}.')
  return words, sizes[0] if sizes else ''


def inception_rmsprop_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The Inception-v4 paper's recipe (§4): TF RMSprop (decay 0.9, ε 1.0, momentum 0.9),
  lr 0.045 ×0.94 every 2 epochs, Polyak averaging; slim's wd 4e-5 and label smoothing 0.1.

  The paper trained on 20 GPU replicas; at 32 images each that is 640 per step,
  the reference batch for the learning rate.
  """
  c.optimizer = 'rmsprop'
  c.rmsprop_decay, c.rmsprop_epsilon, c.momentum = 0.9, 1.0, 0.9
  c.learning_rate = 0.045
  c.reference_batch_size = 640
  c.lr_decay_rate, c.lr_decay_epochs = 0.94, 2
  c.weight_decay = 4e-5
  c.label_smoothing = 0.1
  c.ema_decay = 0.9999
  c.dataset = 'imagenet2012'
  c.image_size = 299
  c.batch_size = 1024
  c.num_epochs = 100
  c.eval_every_steps = 2 * 1251     # About every 2 epochs at 1,024 per step.
  return c


def load_config(spec: str | Path) -> ml_collections.ConfigDict:
  """The config of a config file, as `--config=` reads it: 'configs/x.py' or 'configs/x.py:variant'.

  The file's `get_config(variant)` is called with the text after ':', or with
  no argument when there is none.
  """
  path, _, variant = str(spec).partition(':')
  if not Path(path).is_file():
    raise ValueError(f'No config file {path}.')
  module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()
