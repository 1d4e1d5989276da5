"""Every training option with its default; experiment configs in configs/ override these.

Durations are named by unit: *_steps, *_epochs, *_examples.
"""
from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Defaults: the Xception ImageNet recipe's optimizer settings on a 1-step placeholder run."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Model: any name of models.list_models(); model_kwargs are its module attributes.
  c.model = 'xception'
  c.model_kwargs = ml_collections.ConfigDict()
  c.dtype = 'float32'            # Compute dtype: 'float32' or 'bfloat16' (params stay float32).
  c.init_from = ''               # Converted weights (python -m xception_jax.convert) to start from.

  # Data: a TFDS name, 'folder:PATH' (PATH/<split>/<class>/<image>) or 'digits' (bundled).
  c.dataset = 'imagenet2012'
  c.data_dir = ml_collections.config_dict.placeholder(str)    # TFDS data_dir / digits cache.
  c.manual_dir = ml_collections.config_dict.placeholder(str)  # ImageNet's downloaded archives.
  c.train_split = 'train'
  c.eval_split = 'validation'
  c.image_size = 299
  c.eval_crop_fraction = 0.875
  c.shuffle_buffer = 16_384
  c.augment = ml_collections.ConfigDict(dict(
      min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.05, 1.0),
      flip=True, color_distortion='fast'))

  # Batch and duration. batch_size is global (all devices of all processes).
  c.batch_size = 2048
  c.eval_batch_size = 0          # 0: same as batch_size.
  c.num_epochs = 1.0
  c.total_steps = 0              # > 0 overrides num_epochs.

  # Optimizer and schedule.
  c.optimizer = 'sgd'            # 'sgd', 'rmsprop' (TF form), 'adam', 'adamw'.
  c.learning_rate = 0.045
  c.reference_batch_size = 0     # > 0: learning rate × batch_size / reference_batch_size.
  c.momentum = 0.9
  c.nesterov = False
  c.rmsprop_decay = 0.9
  c.rmsprop_epsilon = 1.0
  c.adamw_weight_decay = 0.0
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

  # Logging, evaluation, checkpoints.
  c.log_every_steps = 100
  c.eval_every_steps = 0         # 0: evaluate at the end only.
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.eval_only = False            # Evaluate init_from, or the workdir's latest checkpoint.
  c.nonfinite_steps = 'stop'     # A NaN/inf loss or gradient: 'stop' with an error, or 'skip'.
  c.compilation_cache_dir = ''   # Persistent XLA cache: restarts after preemption compile fast.

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
