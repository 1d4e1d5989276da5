"""Model registry and the command-line tools around the models."""
import subprocess
import sys

import pytest

from keras_helpers import save_legacy_weights
from xception_jax import models
from xception_jax.tools import model_table


def test_registry_lists_and_builds_models():
  assert 'xception' in models.list_models()
  assert models.list_models() == sorted(models.list_models())
  model = models.create_model('xception', num_classes=7, width_multiplier=0.5)
  assert isinstance(model, models.Xception)
  assert (model.num_classes, model.width_multiplier) == (7, 0.5)


def test_unknown_models_and_options_are_named():
  with pytest.raises(ValueError, match=r"Unknown model 'xceptoin'; available: .*xception"):
    models.create_model('xceptoin')
  with pytest.raises(ValueError, match=r'xception has no option\(s\) widht; valid options: .*'
                                       r'width_multiplier'):
    models.create_model('xception', widht=0.5)


def test_summary_table_matches_reference_counts():
  text = model_table.format_summary('xception', models.create_model('xception'), 299, depth=1)
  lines = text.splitlines()
  rows = {line.split()[0]: line.split() for line in lines[2:-3]}
  assert rows['block1_conv1'][1:] == ['(1,', '149,', '149,', '32)', '928']
  assert rows['block4'][-1] == '915,944'          # ARCHITECTURES.md per-part counts.
  assert rows['block13'][-1] == '2,039,584'
  assert rows['head'][-1] == '2,049,000'
  assert list(rows)[:3] == ['block1_conv1', 'block1_conv2', 'block2']  # Call order.
  assert lines[-3:] == ['Trainable parameters: 22,855,952',
                        'Non-trainable (BN statistics): 54,528', 'Total: 22,910,480']


def test_summary_options_parse_python_literals():
  assert models.parse_options(['width_multiplier=0.25', 'fc_layers=(8, 8)',
                                'intermediate_activation=elu']) == {
      'width_multiplier': 0.25, 'fc_layers': (8, 8), 'intermediate_activation': 'elu'}
  with pytest.raises(ValueError, match='key=value'):
    models.parse_options(['width_multiplier'])


def run_module(*args):
  return subprocess.run([sys.executable, '-m', *args], capture_output=True, text=True,
                        timeout=300)


def test_summary_command_line():
  result = run_module('xception_jax.summary', '--model=xception', '--image_size=71',
                      '--set=width_multiplier=0.25', '--set=middle_flow_repeats=1')
  assert result.returncode == 0, result.stderr
  assert 'xception at 71x71' in result.stdout and 'Trainable parameters:' in result.stdout


@pytest.mark.long
def test_convert_command_line(tmp_path):
  import keras
  reference = keras.applications.Xception(weights=None, input_shape=(71, 71, 3), classes=10)
  save_legacy_weights(reference, tmp_path / 'w.h5')
  result = run_module('xception_jax.convert', '--model=xception', f'--input={tmp_path}/w.h5',
                      f'--output={tmp_path}/ckpt')
  assert result.returncode == 0, result.stderr
  # 20,806,952 backbone + 2048·10 + 10 head parameters.
  assert 'Wrote 20,827,442 trainable parameters' in result.stdout
  again = run_module('xception_jax.convert', '--model=xception', f'--input={tmp_path}/w.h5',
                     f'--output={tmp_path}/ckpt')
  assert again.returncode != 0 and 'choose a new directory' in again.stderr
