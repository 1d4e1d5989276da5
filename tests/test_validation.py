"""Config validation: every field's valid values, unknown fields and model options, one line each."""
import ml_collections
import pytest

from xception_jax.trainer import command_line, validation
from xception_jax.trainer.config_defaults import base_config, load_config
from run_helpers import REPO

POSITIVE_INTEGER, COUNT = 'an integer >= 1', 'an integer >= 0'
NON_NEGATIVE, FRACTION = 'a number >= 0', 'a number in [0, 1)'
BOOLEAN, TEXT, OPTIONAL_TEXT = 'True or False', 'a string', 'a string or None'
# Every field of the defaults: a value it refuses and what the error says is valid.
TABLE = {
    'adamw_weight_decay': (-0.1, NON_NEGATIVE),
    'async_checkpoints': (1, BOOLEAN),
    'augment.area_range': ((0.5, 1.5), 'a pair (a, b) with 0 < a <= b <= 1'),
    'augment.aspect_ratio_range': ((2.0, 1.0), 'a pair (a, b) with 0 < a <= b'),
    'augment.color_distortion': ('vivid', "one of 'fast', 'slow', None"),
    'augment.flip': ('yes', BOOLEAN),
    'augment.min_object_covered': (1.5, 'a number in [0, 1]'),
    'aux_loss_weight': (-1.0, NON_NEGATIVE),
    'bad_images': ('ignore', "one of 'error', 'skip'"),
    'batch_norm': ('local', "one of 'device', 'global'"),
    'batch_size': (-4, POSITIVE_INTEGER),
    'checkpoint_every_steps': (-1, COUNT),
    'class_weights': (None, TEXT),
    'compilation_cache_dir': (0, TEXT),
    'data_dir': (3, OPTIONAL_TEXT),
    'dataset': ('', "a data set: a TFDS name, 'folder:PATH', 'multilabel:PATH', 'digits' or "
                    "'digits_multilabel'"),
    'distributed.coordinator_address': (8476, OPTIONAL_TEXT),
    'distributed.enabled': ('true', BOOLEAN),
    'distributed.num_processes': (0, POSITIVE_INTEGER),
    'distributed.process_id': (-1, COUNT),
    'dtype': ('float16', "one of 'auto', 'float32', 'bfloat16'"),
    'compiler_options': ('cpu_scheduler=fast', "'xla_NAME=VALUE,...' (XLA compiler options)"),
    'ema_decay': (1.0, FRACTION),
    'ema_warmup': (None, BOOLEAN),
    'eval_batch_size': (-8, COUNT),
    'eval_crop_fraction': (0.0, 'a number in (0, 1]'),
    'eval_datasets': ('imagenet_v2,@test', "'[NAME=]DATASET[@SPLIT],...' (e.g. "
                                           "'imagenet2012_real,v2=imagenet_v2@test')"),
    'eval_resize': ('nearest', "one of 'bilinear', 'bicubic'"),
    'freeze': ('block[', "'', 'backbone', 'head' or a regular expression (not a regular "
                         "expression (unterminated character set at position 5))"),
    'eval_every_steps': (2.5, COUNT),
    'eval_only': ('no', BOOLEAN),
    'eval_split': ('', 'a non-empty string'),
    'execution.avg_pool': ('fused', "one of 'auto', 'xla', 'after_pointwise'"),
    'execution.conv': ('winograd', "one of 'auto', 'xla', 'im2col', 'onednn'"),
    'execution.depthwise': ('fft', "one of 'auto', 'xla', 'shifted', 'onednn'"),
    'execution.norm': ('sync', "one of 'auto', 'xla', 'fused'"),
    'execution.pointwise': ('gemm', "one of 'auto', 'xla', 'dot', 'onednn'"),
    'execution.pool': ('fast', "one of 'auto', 'xla', 'shifted'"),
    'execution.remat': ('blocks', BOOLEAN),
    'execution.residual': ('kept', "one of 'auto', 'xla', 'stored'"),
    'grad_clip_norm': (-1.0, NON_NEGATIVE),
    'image_size': (0, POSITIVE_INTEGER),
    'init_from': (None, TEXT),
    'keep_checkpoints': (0, POSITIVE_INTEGER),
    'label_key': ('', 'a non-empty string'),
    'label_smoothing': (1.0, FRACTION),
    'learning_rate': (-1.0, NON_NEGATIVE),
    'log_every_steps': (0, POSITIVE_INTEGER),
    'lr_decay_epochs': (0.0, 'a number > 0'),
    'lr_decay_examples': (-5, COUNT),
    'lr_decay_rate': (1.5, 'a number in (0, 1]'),
    'lr_multipliers': ('backbone:0.1', "'PATTERN=M,...' (PATTERN 'backbone', 'head' or a "
                                       "regular expression; M >= 0)"),
    'lr_schedule': ('step', "one of 'exponential', 'cosine'"),
    'manual_dir': (1, OPTIONAL_TEXT),
    'map_top_k': (0, POSITIVE_INTEGER),
    'model': ('nope', "one of inception_resnet_v1, inception_resnet_v2, inception_v3, "
                      "inception_v4, xception ('' with init_from: its model)"),
    'momentum': (1.0, FRACTION),
    'nesterov': ('on', BOOLEAN),
    'nonfinite_steps': ('ignore', "one of 'stop', 'skip'"),
    'num_epochs': (-1.0, NON_NEGATIVE),
    'optimizer': ('lamb', "one of 'sgd', 'rmsprop', 'adam', 'adamw'"),
    'reference_batch_size': (-1, COUNT),
    'resume_with_changes': ('batch_size,lr', 'a list of config fields (unknown: lr)'),
    'rmsprop_decay': (1.0, FRACTION),
    'rmsprop_epsilon': (0.0, 'a number > 0'),
    'seed': (-1, COUNT),
    'shuffle_buffer': (-1, COUNT),
    'steps_per_call': (0, POSITIVE_INTEGER),
    'total_steps': (True, COUNT),
    'train_split': ('', 'a non-empty string'),
    'warmup_epochs': (-1.0, NON_NEGATIVE),
    'weight_decay': (float('nan'), NON_NEGATIVE),
    'workdir_lock_stale_seconds': (0.0, 'a number > 0'),
}


def config_with(field, value):
  """The defaults with one field set to anything (bypassing ConfigDict's type safety)."""
  values = base_config().to_dict()
  node, _, leaf = field.rpartition('.')
  (values[node] if node else values)[leaf] = value
  return ml_collections.ConfigDict(values)


def test_the_table_covers_every_field():
  assert set(TABLE) | {'model_kwargs'} == validation.declared_fields()


@pytest.mark.parametrize('field', sorted(TABLE))
def test_a_bad_value_is_one_line_naming_the_field_and_what_is_valid(field):
  value, expected = TABLE[field]
  validation.validate(base_config())  # The defaults pass.
  with pytest.raises(ValueError) as raised:
    validation.validate(config_with(field, value))
  assert str(raised.value) == f'{field} must be {expected}, got {value!r}.'


def test_every_config_file_and_variant_validates():
  for path in sorted((REPO / 'configs').glob('*.py')):
    variants = [''] if path.stem == 'quickstart' else ['', ':local']
    for variant in variants:
      config = load_config(f'{path}{variant}')
      # JFT is not public, and fine-tuning is on the user's images: the user names the data.
      if path.stem in ('jft_like', 'finetune') and not variant:
        with pytest.raises(ValueError, match='^dataset must be a data set'):
          validation.validate(config)
      else:
        validation.validate(config)


def test_unknown_fields_and_model_options_name_the_closest_valid_one():
  config = config_with('batch_sise', 8)
  with pytest.raises(ValueError, match=r'^The config has no field batch_sise \(did you mean '
                                       r'batch_size\?\)\.$'):
    validation.validate(config)
  config = base_config()
  config.model_kwargs.widht_multiplier = 0.5
  with pytest.raises(ValueError) as raised:
    validation.validate(config)
  assert str(raised.value) == (
      'xception has no option widht_multiplier (did you mean width_multiplier?); its options: '
      'bn_epsilon, bn_momentum, bn_scale, channel_segments, dropout_rate, fc_activation, '
      'fc_layers, include_top, intermediate_activation, middle_flow_repeats, pool_padding, '
      'pooling, residual, width_multiplier.')
  config = base_config()
  config.model_kwargs.fc_layers = 'big'
  with pytest.raises(ValueError, match=r"^model_kwargs.fc_layers must be like \(\) \(tuple\), "
                                       r"got 'big'\.$"):
    validation.validate(config)
  config = base_config()
  config.num_epochs = 0.0
  with pytest.raises(ValueError, match='^num_epochs is 0 and total_steps is 0'):
    validation.validate(config)


def test_the_command_line_sets_any_model_option_and_names_unknown_fields():
  argv, options = command_line.split_model_options(
      ['main', '--config=c.py', '--config.model_kwargs.fc_layers=(64,)',
       '--config.model_kwargs.pooling', 'max', '--config.batch_size=8'])
  assert argv == ['main', '--config=c.py', '--config.batch_size=8']
  assert options == ['fc_layers=(64,)', 'pooling=max']
  parser = command_line.Parser()
  parser.model_options = options
  config = parser.with_model_options(load_config(REPO / 'configs' / 'imagenet.py'))
  assert (config.model_kwargs.fc_layers, config.model_kwargs.pooling) == ((64,), 'max')
  assert config.model_kwargs.dropout_rate == 0.5  # The file's own option stays.
  validation.validate(config)
  assert command_line.unknown_override(['main', '--config.batch_size=8',
                                        '--config.learnig_rate=0.1']) == 'learnig_rate'
  assert validation.unknown_field_error('learnig_rate') == (
      'The config has no field learnig_rate (did you mean learning_rate?).')
