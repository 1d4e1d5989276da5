"""Multi-label data (label files, TFDS sequence labels), sigmoid training and MAP evaluation."""
import functools
import json

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from data_helpers import image_ids, make_image_folder, multilabel_bits
from helpers import initial_state
from xception_jax.trainer import optim, steps, train
from xception_jax.tools import plot
from xception_jax.trainer.config_defaults import load_config
from xception_jax.data import pipeline, sources
from xception_jax.models.inputs import Preprocessing
from xception_jax.trainer.metric_writers import read_metrics


def label_folder(tmp_path, with_classes_file=True):
  """make_image_folder's images (ids 0..11), labelled by JSON-lines files."""
  root = make_image_folder(tmp_path, classes=2, per_class=3, splits=('train', 'test'))
  names = ['cat', 'dog', 'emu']
  for split, offset in (('train', 0), ('test', 6)):
    lines = []
    for n, path in enumerate(sorted((root / split).glob('*/*.png'))):
      chosen = [names[c] for c in range(3) if (n + offset) >> c & 1]  # Bits of the id.
      lines.append(json.dumps({'image': str(path.relative_to(root)), 'labels': chosen}))
    (root / f'{split}.jsonl').write_text('\n'.join(lines) + '\n')
  if with_classes_file:
    (root / 'classes.txt').write_text('cat\ndog\nemu\nyak\n')
  return root


def test_label_files_give_multi_hot_labels(tmp_path):
  source = sources.get_source(f'multilabel:{label_folder(tmp_path)}')
  assert source.multilabel and source.class_names == ['cat', 'dog', 'emu', 'yak']
  ds, _ = pipeline.eval_batches(source, 'test', 4, Preprocessing(16))
  batches = list(ds.as_numpy_iterator())
  assert [b['label'].shape for b in batches] == [(4, 4), (4, 4)]
  ids = np.concatenate([image_ids(b['image']) for b in batches])[:6]
  labels = np.concatenate([b['label'] for b in batches])
  expected = [[(i >> c) & 1 for c in range(3)] + [0] for i in ids]  # Image 6 is 0b110.
  np.testing.assert_array_equal(labels[:6], expected)
  np.testing.assert_array_equal(labels[6:], 0)  # Padding: no positives.
  assert labels.dtype == np.float32


def test_label_file_errors(tmp_path):
  root = label_folder(tmp_path, with_classes_file=False)
  assert sources.MultiLabelFolderSource(root).class_names == ['cat', 'dog', 'emu']
  (root / 'test.jsonl').write_text('{"image": "a.png", "labels": ["gnu"]}\n')
  with pytest.raises(ValueError, match="classes missing from the class list: 'gnu'"):
    sources.MultiLabelFolderSource(root).split_size('test')
  (root / 'test.jsonl').write_text('{"img": "a.png"}\n')
  with pytest.raises(ValueError, match='test.jsonl:1: expected'):
    sources.MultiLabelFolderSource(root).split_size('test')
  with pytest.raises(ValueError, match="no label file for split 'validation'"):
    sources.MultiLabelFolderSource(root).split_size('validation')


@pytest.mark.parametrize('label_key', ['labels', 'multi_hot'])
def test_tfds_sequence_and_multi_hot_features_give_multi_hot_labels(tmp_path, label_key):
  source = sources.get_source('multi_label_shapes', data_dir=str(tmp_path), label_key=label_key)
  assert source.multilabel and source.num_classes == 4 and source.split_size('test') == 13
  ds, _ = pipeline.eval_batches(source, 'test', 13, Preprocessing(16))
  batch = next(ds.as_numpy_iterator())
  np.testing.assert_array_equal(batch['label'], multilabel_bits(image_ids(batch['image'])))
  assert source.class_names == (['a', 'b', 'c', 'd'] if label_key == 'labels'
                                else ['0', '1', '2', '3'])


class TinyNet(nn.Module):
  """Conv, batch norm, pooled dense logits: a seconds-to-compile stand-in for training steps."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3), strides=2)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(6)(x.mean(axis=(1, 2)))


def test_sigmoid_training_lowers_the_loss_on_a_fixed_batch():
  config = load_config('configs/jft_like.py')  # RMSprop, momentum 0.9, lr 0.001.
  config.batch_size = 8
  schedule = optim.learning_rate_schedule(config, steps_per_epoch=10)
  tx = optim.optimizer(config, schedule)
  model = TinyNet()
  rng = np.random.default_rng(0)
  batch = {'image': rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32),
           'label': (rng.random((8, 6)) < 0.4).astype(np.float32)}
  step = jax.jit(functools.partial(
      steps.train_step, model=model, tx=tx, schedule=schedule,
      config=steps.StepConfig(num_classes=6, weight_decay=1e-5, multilabel=True)))
  state = initial_state(model, tx, 16)
  losses = []
  for _ in range(4):
    state, metrics = step(state, batch)
    losses.append(float(metrics['cross_entropy']))
  expected = optax.sigmoid_binary_cross_entropy(
      model.apply({'params': state.params, 'batch_stats': state.batch_stats}, batch['image'],
                  train=True, mutable=['batch_stats'])[0], batch['label']).sum(-1).mean()
  print('sigmoid cross-entropy on a fixed batch:', losses, float(expected))
  assert all(b < a for a, b in zip(losses, losses[1:])), losses
  assert float(expected) < losses[-1]  # The loss after the 4th update is lower still.
  assert 0 <= float(metrics['precision_at_1']) <= 1


@pytest.mark.long
@pytest.mark.all_devices
def test_multilabel_run_on_8_devices_evaluates_map_and_per_class_ap(tmp_path):
  assert jax.device_count() == 8
  config = load_config('configs/jft_like.py:local')
  config.update(dict(dataset='multi_label_shapes', label_key='labels', eval_split='test',
                     data_dir=str(tmp_path / 'tfds'), batch_size=8, eval_batch_size=8,
                     total_steps=2, eval_every_steps=1, async_checkpoints=False,
                     shuffle_buffer=16, class_weights=str(tmp_path / 'w.json')))
  (tmp_path / 'w.json').write_text(json.dumps({'a': 2.0, 'b': 1.0, 'd': 0.5}))
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['count'] == 13  # 13 does not divide by the batch of 8.
  # Images with an AP have a positive of weight > 0 ('c' weighs 0): all but ids 16 and 20.
  assert results['images_with_ap'] == 11
  for key in ('loss', 'map100', 'class_map', 'loss_ema', 'map100_ema', 'class_map_ema'):
    assert 0 <= results[key] and (key.startswith('loss') or results[key] <= 1), key
  per_class = json.loads((tmp_path / 'run' / 'per_class_ap.json').read_text())
  assert per_class['step'] == 2 and per_class['classes'] == ['a', 'b', 'c', 'd']
  assert per_class['positives'] == multilabel_bits(range(16, 29)).sum(0).astype(int).tolist()
  assert [r['step'] for r in read_metrics(tmp_path / 'run') if 'eval/map100_ema' in r] == [1, 2]
  steps_logged, values = plot.profile(tmp_path / 'run', 'eval/map100_ema')
  assert steps_logged == [1, 2] and values[-1] == results['map100_ema']
  assert json.loads((tmp_path / 'run' / 'task.json').read_text()) == {'multilabel': True}


def test_predict_reads_multilabel_outputs_as_sigmoids():
  from xception_jax.tools import predict
  model, images = TinyNet(), np.zeros((1, 16, 16, 3), np.float32)
  variables = model.init(jax.random.PRNGKey(0), images)
  names = list('abcdef')
  logits = np.asarray(model.apply(variables, images))[0]
  for multilabel, expected in ((True, 1 / (1 + np.exp(-logits))),
                               (False, np.exp(logits) / np.exp(logits).sum())):
    predictor = predict.Predictor(model, variables, Preprocessing(16), names, multilabel)
    top = predict.top_classes(predictor, images, top=6)[0]
    assert [name for name, _ in top] == [names[i] for i in np.argsort(-logits)]
    np.testing.assert_allclose([p for _, p in top], np.sort(expected)[::-1], rtol=1e-5)
