"""Every experiment config loads, and its tiny local variant trains end to end."""
import importlib.util
from pathlib import Path

import pytest

from xception_jax import optim, train

CONFIGS = sorted(Path(__file__).parent.parent.glob('configs/*.py'))


def load(path, *args):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def test_imagenet_config_is_the_papers_recipe():
  c = load(Path('configs/imagenet.py'))
  assert (c.model, c.optimizer, c.momentum, c.weight_decay) == ('xception', 'sgd', 0.9, 1e-5)
  assert (c.lr_decay_rate, c.lr_decay_epochs, c.image_size) == (0.94, 2, 299)
  assert c.model_kwargs.dropout_rate == 0.5 and c.ema_decay == 0.9999
  assert optim.peak_learning_rate(c) == pytest.approx(0.045 * 2048 / 1920)


LOCAL = [p for p in CONFIGS if 'local' in p.read_text()]


def test_every_config_has_a_local_variant():
  assert {p.stem for p in CONFIGS} - {p.stem for p in LOCAL} == {'quickstart'}


@pytest.mark.parametrize('path', LOCAL, ids=lambda p: p.stem)
def test_local_variant_builds_its_model_and_state(path, tmp_path):
  config = load(path, 'local')
  config.data_dir = str(tmp_path / 'data')
  setup = train.Setup(config)
  state = setup.abstract_state()  # Shapes only: the model, optimizer and EMA all fit.
  assert state.params.keys() == state.ema_params.keys()
  assert setup.model.__class__.__name__.lower().startswith(config.model.split('_')[0])


def test_local_variant_trains(tmp_path):
  config = load(Path('configs/imagenet.py'), 'local')
  config.data_dir = str(tmp_path / 'data')
  config.async_checkpoints = False
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['count'] == 355  # The digits test split, every example once.


def test_inception_configs_use_the_papers_recipes():
  v3 = load(Path('configs/inception_v3.py'))
  xception = load(Path('configs/imagenet.py'))
  assert v3.weight_decay == 4e-5 and not v3.model_kwargs.aux_logits
  for key in ('optimizer', 'learning_rate', 'lr_decay_rate', 'lr_decay_epochs', 'batch_size',
              'ema_decay', 'image_size'):
    assert v3[key] == xception[key], key
  v4 = load(Path('configs/inception_v4.py'))
  assert (v4.optimizer, v4.rmsprop_decay, v4.rmsprop_epsilon, v4.momentum) == \
      ('rmsprop', 0.9, 1.0, 0.9)
  assert optim.peak_learning_rate(v4) == pytest.approx(0.045 * 1024 / 640)
