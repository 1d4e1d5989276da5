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


@pytest.mark.parametrize('path', [p for p in CONFIGS if 'local' in p.read_text()],
                         ids=lambda p: p.stem)
def test_local_variant_trains(path, tmp_path):
  config = load(path, 'local')
  config.data_dir = str(tmp_path / 'data')
  config.async_checkpoints = False
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['count'] == 355  # The digits test split, every example once.
