"""Training state, the model a config asks for, and initialisation (fresh or pretrained)."""
from __future__ import annotations

from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from flax import traverse_util

from xception_jax import models, weights
from xception_jax.models import compiler
from xception_jax.trainer.param_groups import HEAD_MODULES

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# 'auto': bfloat16 compute where the hardware has fast bfloat16 matrix units (GPU, TPU),
# float32 on CPU, where bfloat16 convolutions are emulated and slower than float32.
AUTO_DTYPES = {'gpu': 'bfloat16', 'cuda': 'bfloat16', 'rocm': 'bfloat16', 'tpu': 'bfloat16'}


def compute_dtype(name: str) -> str:
  """'float32' or 'bfloat16': `name` itself, or for 'auto' the default backend's choice."""
  if name != 'auto':
    return name
  return AUTO_DTYPES.get(jax.default_backend(), 'float32')


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue: a checkpoint holds exactly this.

  `step` is also the position in the deterministic input stream (batches
  consumed per process), so restoring it resumes the data where it stopped.
  """
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any          # Polyak averages of params ...
  ema_batch_stats: Any     # ... and of the BN moving statistics.
  rng: jnp.ndarray

  def variables(self, ema: bool = False) -> dict[str, Any]:
    """{'params', 'batch_stats'}: raw or averaged."""
    if ema:
      return {'params': self.ema_params, 'batch_stats': self.ema_batch_stats}
    return {'params': self.params, 'batch_stats': self.batch_stats}


def step_compiler_options(config: ml_collections.ConfigDict, model) -> dict[str, Any]:
  """The XLA compiler options of the config's jitted steps: the model's defaults with
  `compiler_options` ('name=value,...', values as Python literals) over them; a ValueError
  if XLA rejects one of those."""
  chosen = models.parse_options(
      [item for item in config.get('compiler_options', '').split(',') if item.strip()])
  compiler.check_options(chosen)   # A one-line error now rather than a failed compile later.
  return {**models.compiler_options(model=model), **chosen}


def init_from_directory(config: ml_collections.ConfigDict):
  """The converted-weights directory `init_from` names (a tag is downloaded and converted
  the first time), or None without init_from."""
  if not config.get('init_from'):
    return None
  return weights.resolve(config.init_from)


def with_init_from_model(config: ml_collections.ConfigDict,
                         evaluation: bool = False) -> ml_collections.ConfigDict:
  """`config`, with `model` and `model_kwargs` from `init_from`'s weights when `model` is ''.

  The weights' options come first and the config's `model_kwargs` override
  them; the classifier always exists and its size comes from the data. For an
  `evaluation`, the weights' preprocessing (image size, crop, resize) too.
  Weights that expect inputs other than [−1, 1] (what the input pipeline
  feeds) are a ValueError.
  """
  directory = init_from_directory(config) if not config.get('model') else None
  if directory is None or not weights.is_converted(directory):
    return config
  info = weights.load_info(directory)
  if not info.preprocessing.minus_one_to_one:
    raise ValueError(f'{config.init_from} expects inputs normalised with mean '
                     f'{info.preprocessing.mean} and std {info.preprocessing.std}; training '
                     'feeds images scaled to [-1, 1]: convert weights trained that way.')
  options = {k: v for k, v in info.options.items() if k not in ('num_classes', 'include_top')}
  if 'pooling' in options and options['pooling'] is None:
    del options['pooling']  # A feature-map backbone: the classifier pools as the model does.
  resolved = config.copy_and_resolve_references()
  with resolved.unlocked():
    resolved.model = info.model
    resolved.model_kwargs = ml_collections.ConfigDict({**options, **config.model_kwargs})
    if evaluation:
      resolved.image_size = info.preprocessing.image_size
      resolved.eval_crop_fraction = info.preprocessing.crop_fraction
      resolved.eval_resize = info.preprocessing.resize
  return resolved


def build_model(config: ml_collections.ConfigDict, num_classes: int):
  """The config's model for `num_classes`; a ValueError if the image size is too small."""
  dtype = compute_dtype(config.dtype)
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {config.dtype!r}.")
  if config.dtype == 'auto':
    logging.info('dtype auto: %s compute on %s (parameters float32).', dtype,
                 jax.default_backend())
  model = models.create_model(config.model, num_classes=num_classes,
                              dtype=DTYPES[dtype], execution=config.get('execution'),
                              **config.get('model_kwargs', {}))
  if config.image_size < model.min_input_size:
    raise ValueError(f'image_size {config.image_size} is below the minimum of {config.model} '
                     f'({model.min_input_size}x{model.min_input_size}); raise image_size.')
  return model


def merge_pretrained(fresh: dict[str, Any], pretrained: dict[str, Any],
                     source: str) -> dict[str, Any]:
  """`fresh` with every leaf replaced by `pretrained`'s, except differing classifier heads.

  Head leaves whose shape differs (another number of classes) or that the
  source lacks keep their fresh initialisation and are logged. Any other
  missing or mis-shaped leaf is a ValueError that names it.
  """
  fresh_flat = traverse_util.flatten_dict(fresh)
  loaded = traverse_util.flatten_dict(pretrained)
  merged, kept, bad = {}, [], []
  for path, value in fresh_flat.items():
    source_value = loaded.get(path)
    if source_value is not None and tuple(source_value.shape) == tuple(value.shape):
      merged[path] = jnp.asarray(source_value, value.dtype)
    elif any(name in HEAD_MODULES for name in path):
      merged[path] = value
      kept.append('/'.join(path))
    else:
      found = 'missing' if source_value is None else f'shape {tuple(source_value.shape)}'
      bad.append(f'{"/".join(path)} ({found}, model {tuple(value.shape)})')
  extra = [p for p in loaded if p not in fresh_flat and not any(h in p for h in HEAD_MODULES)]
  if bad or extra:
    raise ValueError(f'{source} does not fit the model: ' + '; '.join(
        bad + [f'{"/".join(p)} (not in the model)' for p in extra][:12]))
  if kept:
    logging.info('Initialised from %s; fresh classifier: %s', source, ', '.join(kept))
  return traverse_util.unflatten_dict(merged)


def create_train_state(model, tx: optax.GradientTransformation, image_size: int,
                       rng: jnp.ndarray, pretrained: Optional[dict[str, Any]] = None,
                       pretrained_name: str = 'pretrained weights') -> TrainState:
  """A step-0 state: fresh variables, or `pretrained` ones (e.g. converted weights).

  Traceable: jit it with output shardings to build the state on the mesh.
  """
  init_rng, state_rng = jax.random.split(rng)
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = model.init(init_rng, images, train=False)
  if pretrained is not None:
    variables = merge_pretrained(variables, pretrained, pretrained_name)
  params, batch_stats = variables['params'], variables.get('batch_stats', {})
  return TrainState(step=jnp.zeros([], jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx.init(params), ema_params=params, ema_batch_stats=batch_stats,
                    rng=state_rng)
