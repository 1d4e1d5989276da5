"""Model registry and the command-line tools around the models."""
import re
import subprocess
import sys

import pytest

from keras_helpers import save_legacy_weights
from xception_jax import models, weights
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
  assert rows['block4'][-1] == '915,944'          # docs/architectures.md per-part counts.
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


@pytest.mark.long(seconds=30)
def test_convert_then_predict_command_lines(tmp_path):
  import keras
  import tensorflow as tf
  reference = keras.applications.Xception(weights=None, input_shape=(71, 71, 3), classes=10)
  save_legacy_weights(reference, tmp_path / 'w.h5')
  (tmp_path / 'names.txt').write_text(''.join(f'digit {i}\n' for i in range(10)))
  result = run_module('xception_jax.convert', '--model=xception', f'--input={tmp_path}/w.h5',
                      f'--labels={tmp_path}/names.txt', '--image_size=71',
                      f'--output={tmp_path}/ckpt')
  assert result.returncode == 0, result.stderr
  # 20,806,952 backbone + 2048·10 + 10 head parameters.
  assert result.stdout.strip() == ('Wrote 20,827,442 trainable parameters of xception '
                                   f'(num_classes=10) to {tmp_path}/ckpt')
  # An existing output is refused before the input is read (here it does not even exist).
  again = run_module('xception_jax.convert', '--model=xception', f'--input={tmp_path}/no.h5',
                     f'--output={tmp_path}/ckpt')
  assert again.returncode == 1
  assert again.stderr.strip().splitlines()[-1] == (
      f'error: {tmp_path}/ckpt exists; choose a new directory for the converted weights.')
  # The directory alone says which model, input size and class names.
  (tmp_path / 'image.png').write_bytes(tf.io.encode_png(tf.zeros([80, 90, 3], tf.uint8)).numpy())
  predicted = run_module('xception_jax.predict', f'--weights={tmp_path}/ckpt', '--top=3',
                         f'{tmp_path}/image.png')
  assert predicted.returncode == 0, predicted.stderr
  lines = predicted.stdout.strip().splitlines()
  assert lines[0] == f'{tmp_path}/image.png' and len(lines) == 4
  assert all(re.fullmatch(r'  \d\. digit \d +\d+\.\d\d%', line) for line in lines[1:])


def test_an_existing_output_is_refused_before_a_download_starts(tmp_path, monkeypatch):
  from xception_jax.weights import convert, published
  monkeypatch.setattr(published, 'pretrained_directory', lambda tag: pytest.fail('downloaded'))
  with pytest.raises(FileExistsError, match=f'^{tmp_path} exists; choose a new directory'):
    convert.copy_pretrained('xception.keras_in1k', tmp_path)


def test_convert_lists_the_pretrained_tags():
  listed = run_module('xception_jax.convert', '--list')
  assert listed.returncode == 0, listed.stderr
  rows = [line.split() for line in listed.stdout.strip().splitlines()]
  assert [row[0] for row in rows] == weights.list_pretrained()
  assert rows[0][1:] == ['keras', 'top-1', '80.3%', weights.pretrained_info(rows[0][0]).url]
