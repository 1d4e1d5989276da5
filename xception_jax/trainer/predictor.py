"""A trained or converted model ready to predict: its variables, input preprocessing and
class names, from a training workdir, a converted-weights directory or a pretrained tag."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import ml_collections

from xception_jax import models, weights
from xception_jax.models.inputs import Preprocessing
from xception_jax.trainer.checkpoints import Checkpoints
from xception_jax.trainer.evaluate import eval_preprocessing
from xception_jax.trainer.state import build_model


@dataclasses.dataclass
class Predictor:
  """A model with its variables, how its inputs are made, and what its outputs are called."""
  model: Any
  variables: dict[str, Any]
  preprocessing: Preprocessing
  class_names: list[str]
  multilabel: bool = False


def from_workdir(workdir: str, raw: bool = False) -> Predictor:
  """A training workdir's model, latest weights (averaged unless `raw`), preprocessing and
  class names."""
  path = Path(workdir)
  if not (path / 'config.json').is_file():
    raise FileNotFoundError(f'{path} has no config.json: not a training workdir.')
  config = ml_collections.ConfigDict(json.loads((path / 'config.json').read_text()))
  class_names = json.loads((path / 'class_names.json').read_text())
  checkpoints = Checkpoints(path / 'checkpoints', async_save=False)
  if not checkpoints.steps():
    raise FileNotFoundError(f'{path / "checkpoints"} holds no checkpoint yet.')
  saved = checkpoints.restore_arrays(checkpoints.steps()[-1])
  prefix = '' if raw else 'ema_'
  variables = {'params': saved[f'{prefix}params'], 'batch_stats': saved[f'{prefix}batch_stats']}
  task = path / 'task.json'
  multilabel = task.is_file() and json.loads(task.read_text())['multilabel']
  return Predictor(build_model(config, len(class_names)), variables, eval_preprocessing(config),
                   class_names, multilabel)


def from_weights(directory: str, model_name: Optional[str] = None,
                 options: Optional[dict[str, Any]] = None) -> Predictor:
  """Converted weights (a directory or a pretrained tag) with what they record.

  `model_name` and `options` override or, for the older layout, supply the model.
  """
  directory = weights.resolve(directory)
  variables = weights.load_variables(directory)
  if 'head' not in variables['params']:
    raise ValueError(f'{directory} holds a backbone without a classifier: nothing to predict.')
  options = dict(options or {})
  if weights.is_converted(directory):
    info = weights.load_info(directory)
    model = models.create_model(model_name or info.model, **{**info.options, **options})
    spec, names = info.preprocessing, info.class_names
  elif model_name:
    options.setdefault('num_classes', variables['params']['head']['predictions']['bias'].shape[0])
    model, spec, names = models.create_model(model_name, **options), Preprocessing(), None
  else:
    raise ValueError(f'{directory} has no weights.json: give --model (and --set, '
                     '--image_size, --labels) or convert the weights again.')
  names = list(names) if names else [f'class {i}' for i in range(model.num_classes)]
  return Predictor(model, variables, spec, names)


def load(name: str, raw: bool = False) -> Predictor:
  """A training workdir (its averaged weights unless `raw`), a converted-weights directory or
  a pretrained tag."""
  if (Path(name) / 'config.json').is_file():
    return from_workdir(name, raw)
  return from_weights(name)
