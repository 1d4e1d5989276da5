"""Transfer learning: a converted Keras model fine-tuned on the bundled digits with the
README's commands; frozen parameters, learning-rate multipliers, the cosine schedule, and a
model taken from init_from's weights."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import traverse_util

from helpers import random_variables, tiny_config
from run_helpers import REPO
from xception_jax import models, weights
from xception_jax.trainer import optim, param_groups, resume, state, steps
from xception_jax.trainer.checkpoints import Checkpoints
from xception_jax.trainer.config_defaults import load_config

SIZE = 71
STEPS = 40


def digits(count: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
  """The first `count` bundled digits as [-1, 1] RGB images, and their labels."""
  import tensorflow as tf
  from sklearn.datasets import load_digits
  data = load_digits()
  images = tf.image.resize(data.images[:count, :, :, None] / 16.0, [size, size]).numpy()
  return np.repeat(images, 3, -1) * 2 - 1, data.target[:count]


def keras_classifier(path):
  """A user's fine-tuned Keras model, random weights: Xception under a 6-class head.

  Its BN statistics are estimated on 64 digits: with any other statistics a random deep
  network's features are nearly constant across inputs, and nothing could learn from them.
  """
  import keras
  keras.utils.set_random_seed(0)  # Fixed weights: the accuracy bars below hold with margin.
  backbone = keras.applications.Xception(weights=None, include_top=False,
                                         input_shape=(SIZE, SIZE, 3))
  for layer in backbone.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.momentum = 0.0
  # One jitted training-mode pass (op by op, XLA compiled each of Keras's ops: 6 s, not 1).
  statistics = jax.jit(lambda trainable, other, x: backbone.stateless_call(
      trainable, other, x, training=True)[1])(
          [v.value for v in backbone.trainable_variables],
          [v.value for v in backbone.non_trainable_variables], digits(64)[0])
  for variable, value in zip(backbone.non_trainable_variables, statistics):
    variable.assign(value)
  inputs = keras.Input((SIZE, SIZE, 3))
  pooled = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
  keras.Model(inputs, keras.layers.Dense(6)(pooled)).save(path)


@pytest.mark.long(seconds=60)
def test_convert_fine_tune_and_predict_on_the_digits(tmp_path):
  from xception_jax.tools import predict
  keras_classifier(tmp_path / 'model.keras')
  weights.convert_file('keras', 'xception', tmp_path / 'model.keras', tmp_path / 'converted')
  converted = weights.load_variables(tmp_path / 'converted')

  # The README's fine-tuning command (the classifier alone), as a user runs it: no test-wide
  # XLA flags, since 40 full-size steps and a 355-image evaluation are run-bound.
  run = tmp_path / 'run'
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  result = subprocess.run(
      [sys.executable, '-m', 'xception_jax.main', '--config=configs/finetune.py:head',
       f'--workdir={run}', '--config.dataset=digits', f'--config.data_dir={tmp_path / "data"}',
       '--config.eval_split=test', f'--config.image_size={SIZE}',
       f'--config.init_from={tmp_path / "converted"}', f'--config.total_steps={STEPS}',
       '--config.warmup_epochs=0', '--config.learning_rate=0.3',
       '--config.checkpoint_every_steps=0'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  final = json.loads((run / 'final_metrics.json').read_text())
  print(f'fine-tuned classifier on frozen random features: top-1 {final["top1_ema"]:.4f} '
        f'(EMA), {final["top1"]:.4f} (raw) after {STEPS} steps')
  assert final['count'] == 355 and final['top1_ema'] >= 0.4  # Chance: 0.1.

  # The backbone and its batch-norm statistics are bitwise the converted ones, raw and averaged.
  saved = Checkpoints(run / 'checkpoints').restore_arrays(STEPS)
  before = traverse_util.flatten_dict(converted)
  for collection in ('params', 'batch_stats'):
    for kind in ('', 'ema_'):
      after = traverse_util.flatten_dict(saved[kind + collection])
      frozen = [p for p in after if p[0] != 'head']
      assert frozen and all(np.array_equal(after[p], before[(collection, *p)]) for p in frozen)
  assert saved['params']['head']['predictions']['kernel'].shape == (2048, 10)

  # Predictions from the workdir: its preprocessing, its classes' names.
  predictor = predict.from_workdir(str(run))
  files = sorted((tmp_path / 'data' / 'digits' / 'test').glob('*/*.png'))[::15]
  top = predict.top_classes(predictor, predict.load_images([str(f) for f in files],
                                                           predictor.preprocessing), top=3)
  assert predictor.class_names == [str(i) for i in range(10)]
  right = sum(classes[0][0] == f.parent.name for f, classes in zip(files, top))
  print(f'predict: {right} of {len(files)} test digits right')
  assert right >= 0.25 * len(files)
  assert all(classes[0][1] >= classes[1][1] >= classes[2][1] for classes in top)


def one_step(config, variables, model, batch):
  """The trainer's training step from `variables`, under `config`'s optimizer and groups."""
  schedule = optim.learning_rate_schedule(config, steps_per_epoch=10)
  tx = optim.optimizer(config, schedule)
  template = jax.tree.map(jnp.asarray, variables)
  step_config = steps.StepConfig(
      num_classes=model.num_classes, weight_decay=config.weight_decay, freeze=config.freeze,
      frozen_norms=param_groups.frozen_norms(template, config.freeze))
  start = state.TrainState(jnp.zeros([], jnp.int32), template['params'], template['batch_stats'],
                           tx.init(template['params']), template['params'],
                           template['batch_stats'], jax.random.PRNGKey(0))
  step = jax.jit(lambda s, b: steps.train_step(s, b, model=model, tx=tx, schedule=schedule,
                                               config=step_config))
  return step(start, batch)


@pytest.mark.long(seconds=15)
def test_frozen_parameters_and_batch_norms_stay_and_multipliers_scale_each_group():
  model = models.create_model('xception', num_classes=10, **models.Xception.tiny_options)
  variables = random_variables(model, SIZE)
  images, labels = digits(8)
  batch = {'image': jnp.asarray(images), 'label': jnp.asarray(labels, jnp.int32)}
  frozen = '^block(1_|2/)'  # The stem's convs and the first module.
  results = {}
  for multipliers in ('', 'backbone=0.1'):
    config = tiny_config(freeze=frozen, lr_multipliers=multipliers)
    state_after, metrics = one_step(config, variables, model, batch)
    assert metrics['finite']
    results[multipliers] = jax.device_get(state_after)  # Compared in numpy, not op by op.
  before = traverse_util.flatten_dict(variables)
  plain = traverse_util.flatten_dict({'params': results[''].params,
                                      'batch_stats': results[''].batch_stats})
  scaled = traverse_util.flatten_dict({'params': results['backbone=0.1'].params,
                                       'batch_stats': results['backbone=0.1'].batch_stats})
  is_frozen = lambda path: path[1].startswith('block1_') or path[1] == 'block2'
  for path, value in before.items():
    if is_frozen(path):  # Parameters and BN statistics (inference mode) unchanged.
      np.testing.assert_array_equal(plain[path], value)
      np.testing.assert_array_equal(scaled[path], value)
    elif path[0] == 'params':
      change, scaled_change = plain[path] - value, scaled[path] - value
      factor = 1.0 if path[1] == 'head' else 0.1
      assert np.abs(change).max() > 0, path
      # New − old parameters: float32 rounding of the parameters' size, not the change's.
      np.testing.assert_allclose(scaled_change, factor * change, rtol=1e-4,
                                 atol=4 * np.finfo(np.float32).eps * np.abs(value).max())
    else:  # Statistics of the trained batch norms moved, the same way in both runs.
      assert np.abs(plain[path] - value).max() > 0, path
      np.testing.assert_array_equal(scaled[path], plain[path])


def test_cosine_schedule_warms_up_then_decays_to_zero_and_makes_the_length_count():
  config = tiny_config(lr_schedule='cosine', learning_rate=0.2, warmup_epochs=1, total_steps=50)
  schedule = optim.learning_rate_schedule(config, steps_per_epoch=10)
  values = np.array([float(schedule(s)) for s in range(51)])
  assert values[0] == 0 and values[10] == pytest.approx(0.2) and values[50] == pytest.approx(0)
  assert np.all(np.diff(values[:11]) > 0) and np.all(np.diff(values[10:]) < 0)
  assert values[30] == pytest.approx(0.1, rel=1e-6)  # Half-way through the decay: half.
  assert resume.kind('total_steps', 'cosine') == 'meaning'
  assert resume.kind('total_steps', 'exponential') == 'free'
  assert resume.kind('freeze') == resume.kind('lr_multipliers') == 'structure'


def test_a_new_number_of_classes_re_initialises_the_auxiliary_classifier_too():
  options = dict(models.InceptionV3.tiny_options, aux_logits=True)
  source = models.create_model('inception_v3', num_classes=7, **options)
  target = models.create_model('inception_v3', num_classes=4, **options)
  pretrained = random_variables(source, seed=1)
  fresh = random_variables(target, seed=2)
  merged = state.merge_pretrained(fresh, pretrained, 'a 7-class inception_v3')
  for head in ('head', 'aux'):
    assert merged['params'][head]['predictions']['kernel'].shape[-1] == 4
    np.testing.assert_array_equal(merged['params'][head]['predictions']['kernel'],
                                  fresh['params'][head]['predictions']['kernel'])
  np.testing.assert_array_equal(merged['params']['aux']['conv0']['conv']['kernel'],
                                pretrained['params']['aux']['conv0']['conv']['kernel'])
  np.testing.assert_array_equal(merged['batch_stats']['mixed_7c']['branch0_0']['bn']['mean'],
                                pretrained['batch_stats']['mixed_7c']['branch0_0']['bn']['mean'])


def test_init_from_supplies_the_model_its_options_and_for_evaluation_its_preprocessing(tmp_path):
  model = models.create_model('xception', num_classes=7, fc_layers=(16,), dropout_rate=0.1,
                              **models.Xception.tiny_options)
  weights.save(tmp_path / 'w', random_variables(model),
               weights.describe(model, models.Preprocessing(99, 0.9, 'bicubic')))
  config = tiny_config(model='', init_from=str(tmp_path / 'w'))
  config.model_kwargs = ml_collections.ConfigDict({'dropout_rate': 0.3})
  resolved = state.with_init_from_model(config)
  assert resolved.model == 'xception' and resolved.image_size == config.image_size
  assert resolved.model_kwargs.to_dict() == {'fc_layers': (16,), 'dropout_rate': 0.3,
                                             **models.Xception.tiny_options}
  evaluated = state.with_init_from_model(config, evaluation=True)
  assert (evaluated.image_size, evaluated.eval_crop_fraction, evaluated.eval_resize) == \
      (99, 0.9, 'bicubic')
  weights.save(tmp_path / 'imagenet_scaled', random_variables(model),
               weights.describe(model, models.Preprocessing(mean=(0.485, 0.456, 0.406),
                                                            std=(0.229, 0.224, 0.225))))
  config.init_from = str(tmp_path / 'imagenet_scaled')
  with pytest.raises(ValueError, match=r'expects inputs normalised with mean \(0\.485, 0\.456, '
                                       r'0\.406\) and std .*training feeds images scaled to '
                                       r'\[-1, 1\]'):
    state.with_init_from_model(config)
