"""train_and_evaluate end to end: mock ImageNet on 8 devices, exact resume, fine-tuning, errors."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_helpers import make_image_folder
from xception_jax import evaluate, models, train, weights
from xception_jax.checkpoints import Checkpoints
from xception_jax.config_defaults import base_config
from xception_jax.metric_writers import read_metrics
from xception_jax.state import TrainState


def tiny_config(**overrides):
  c = base_config()
  c.model_kwargs.width_multiplier = 0.25
  c.model_kwargs.middle_flow_repeats = 1
  c.image_size = 71
  c.batch_size = 8
  c.learning_rate = 0.01
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.async_checkpoints = False
  c.shuffle_buffer = 64
  c.update(overrides)
  return c


@pytest.mark.long
def test_mock_imagenet_on_8_devices_counts_every_eval_example(tmp_path):
  assert jax.device_count() == 8
  config = tiny_config(dataset='imagenet2012', total_steps=2, eval_batch_size=8)
  with tfds.testing.mock_data(num_examples=13):  # 13 does not divide by the batch of 8.
    results = train.train_and_evaluate(config, str(tmp_path))
  assert results['count'] == 13
  for key in ('top1', 'top5', 'loss', 'top1_ema', 'top5_ema', 'loss_ema'):
    assert np.isfinite(results[key])
  records = read_metrics(tmp_path)
  assert [r['step'] for r in records] == [1, 2]
  assert all(np.isfinite(r['train/loss']) for r in records)
  assert records[-1]['eval/count'] == 13
  assert json.loads((tmp_path / 'config.json').read_text())['model'] == 'xception'
  assert len(json.loads((tmp_path / 'class_names.json').read_text())) == 1000
  assert 'Trainable parameters:' in (tmp_path / 'model_summary.txt').read_text()
  assert list((tmp_path / 'tensorboard').iterdir())


@pytest.mark.long
def test_resume_is_bitwise_exact(tmp_path):
  root = make_image_folder(tmp_path / 'data', classes=4, per_class=10)  # 40 images, 5 steps/epoch.
  config = tiny_config(dataset=f'folder:{root}', eval_split='test', total_steps=6,
                       model_kwargs={'width_multiplier': 0.25, 'middle_flow_repeats': 1,
                                     'dropout_rate': 0.5})
  straight = train.train_and_evaluate(config, str(tmp_path / 'straight'))
  config.total_steps = 3   # Stop mid-epoch ...
  train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  config.total_steps = 6   # ... and resume across the epoch boundary.
  resumed = train.train_and_evaluate(config, str(tmp_path / 'resumed'))
  assert resumed == straight
  final = [Checkpoints(tmp_path / run / 'checkpoints').restore_arrays(6)
           for run in ('straight', 'resumed')]
  jax.tree.map(np.testing.assert_array_equal, final[0], final[1])
  # Saved at 2, 3 (end of the first run), 4 and 6; the newest three are kept.
  assert Checkpoints(tmp_path / 'resumed' / 'checkpoints').steps() == [3, 4, 6]


def test_fine_tuning_from_converted_weights_with_other_classes(tmp_path):
  pretrained_model = models.create_model('xception', num_classes=7, width_multiplier=0.25,
                                         middle_flow_repeats=1)
  pretrained = pretrained_model.init(jax.random.PRNGKey(42), np.zeros((1, 71, 71, 3)))
  weights.save_variables(pretrained, tmp_path / 'pretrained')
  root = make_image_folder(tmp_path / 'data', classes=4, per_class=4)
  config = tiny_config(dataset=f'folder:{root}', eval_split='test',
                       init_from=str(tmp_path / 'pretrained'))
  setup = train.Setup(config)
  state = setup.init_state(setup.abstract_state())
  backbone = state.params['block4']['sepconv1']['pointwise']['kernel']
  np.testing.assert_array_equal(backbone,
                                pretrained['params']['block4']['sepconv1']['pointwise']['kernel'])
  assert state.params['head']['predictions']['kernel'].shape == (512, 4)  # Fresh 4-class head.
  np.testing.assert_array_equal(state.ema_params['block1_conv1']['conv']['kernel'],
                                pretrained['params']['block1_conv1']['conv']['kernel'])


def test_eval_only_on_converted_weights_and_on_a_checkpoint(tmp_path):
  root = make_image_folder(tmp_path / 'data', classes=4, per_class=3)
  model = models.create_model('xception', num_classes=4, width_multiplier=0.25,
                              middle_flow_repeats=1)
  weights.save_variables(model.init(jax.random.PRNGKey(0), np.zeros((1, 71, 71, 3))),
                         tmp_path / 'w')
  config = tiny_config(dataset=f'folder:{root}', eval_split='test', eval_batch_size=8,
                       init_from=str(tmp_path / 'w'), eval_only=True)
  results = evaluate.evaluate_only(config, str(tmp_path / 'eval'))
  assert results['count'] == 12 and 'top1_ema' not in results
  config = tiny_config(dataset=f'folder:{root}', eval_split='test', total_steps=2)
  trained = train.train_and_evaluate(config, str(tmp_path / 'run'))
  again = evaluate.evaluate_only(config, str(tmp_path / 'run'))
  assert again == trained


@pytest.mark.parametrize('overrides, message', [
    (dict(batch_size=12), 'batch_size 12 does not divide over 8 devices'),
    (dict(model='xceptionn'), "Unknown model 'xceptionn'"),
    (dict(dataset='no_such_dataset_abc'), "Unknown dataset 'no_such_dataset_abc'"),
    (dict(image_size=64), 'image_size 64 is below the minimum of xception'),
    (dict(batch_norm='local'), "batch_norm must be 'device' or 'global'"),
])
def test_bad_configs_fail_with_clear_messages(tmp_path, overrides, message):
  root = make_image_folder(tmp_path / 'data', classes=2, per_class=8, splits=('train',))
  config = tiny_config(dataset=f'folder:{root}')
  config.update(overrides)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / 'checkpoints').exists() or \
      not list((tmp_path / 'run' / 'checkpoints').iterdir())


def test_command_line_reports_bad_input_in_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'xception_jax.main', '--config=configs/quickstart.py',
       f'--workdir={tmp_path}', '--config.model=nope', f'--config.data_dir={tmp_path}'],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith("error: Unknown model 'nope'")


def test_train_state_fields_are_what_checkpoints_hold():
  assert [f for f in TrainState.__dataclass_fields__] == [
      'step', 'params', 'batch_stats', 'opt_state', 'ema_params', 'ema_batch_stats', 'rng']
