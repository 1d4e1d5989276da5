"""The papers' evaluation protocols: the evaluate command, crops, ensembles, ReaL scoring,
ImageNet's evaluation sets, and several evaluation sets during training."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from helpers import random_variables
from run_helpers import REPO, environment
from xception_jax import models, weights
from xception_jax.data import crops, sources
from xception_jax.models.inputs import Preprocessing
from xception_jax.trainer import predictor, protocols
from xception_jax.trainer.metric_writers import read_metrics


def test_the_center_scheme_is_the_trainers_evaluation(trained_workdir, tmp_path):
  config, workdir, data = trained_workdir
  final = json.loads((workdir / 'final_metrics.json').read_text())
  result = subprocess.run(
      [sys.executable, '-m', 'xception_jax.evaluate', str(workdir), f'--dataset=folder:{data}',
       '--split=test', '--batch_size=8', f'--out={tmp_path / "center.json"}'],
      cwd=REPO, env=environment(devices=1), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  written = json.loads((tmp_path / 'center.json').read_text())
  assert written == {'dataset': f'folder:{data}', 'split': 'test', 'crops': 'center',
                     'members': {str(workdir): {'top1': final['top1_ema'],
                                                'top5': final['top5_ema'], 'count': 16.0}}}
  header, row = result.stdout.strip().splitlines()
  assert header.split() == ['Network', 'Crops', 'Top-1', 'error', 'Top-5', 'error', 'Images']
  assert row.split() == [str(workdir), 'center', f'{100 * (1 - final["top1_ema"]):.2f}%',
                         f'{100 * (1 - final["top5_ema"]):.2f}%', '16']
  # The trainer's extra evaluation set, here the same split once more, under its own name.
  extra = [r for r in read_metrics(workdir) if 'eval_again/top1_ema' in r]
  assert [r['step'] for r in extra] == [4]
  assert extra[0]['eval_again/top1_ema'] == final['top1_ema'] == final['again']['top1_ema']


def reference_probabilities(member, source, split, scheme):
  """Each example's crop-averaged probabilities, one image at a time (no batching)."""
  apply = jax.jit(member.model.apply)
  out = []
  for _, example in source.read(split).as_numpy_iterator():
    images = crops.eval_crops(tf.constant(example['image']), member.preprocessing, scheme)
    out.append(np.asarray(jax.nn.softmax(apply(member.variables, images.numpy()))).mean(0))
  return np.stack(out), np.array([e['label'] for _, e in source.read(split).as_numpy_iterator()])


@pytest.mark.long(seconds=25)
@pytest.mark.all_devices
def test_an_ensemble_of_two_models_on_8_devices_counts_every_example_once(trained_workdir,
                                                                          tmp_path):
  _, workdir, data = trained_workdir
  folder = tmp_path / 'data'
  import shutil
  shutil.copytree(data, folder)
  for path in sorted((folder / 'test').glob('*/*'))[:3]:
    path.unlink()  # 13 test images: the last of two batches of 8 is padded.
  narrow = models.create_model('inception_v3', num_classes=4, **models.InceptionV3.tiny_options)
  members = {'xception': predictor.from_workdir(str(workdir)),
             'inception_v3': predictor.Predictor(narrow, random_variables(narrow),
                                                 Preprocessing(79, 0.8, 'bicubic'),
                                                 list('abcd'))}
  source = sources.get_source(f'folder:{folder}')
  results = protocols.evaluate(members, source, 'test', '10', batch_size=8)
  assert jax.device_count() == 8
  probabilities = {}
  for name, member in members.items():
    probabilities[name], labels = reference_probabilities(member, source, 'test', '10')
    expected = protocols.Score()
    expected.add(probabilities[name], np.eye(4)[labels], np.ones(13))
    assert results['members'][name] == pytest.approx(expected.result()), name
  ensemble = protocols.Score()
  ensemble.add(np.mean(list(probabilities.values()), axis=0), np.eye(4)[labels], np.ones(13))
  assert results['ensemble'] == pytest.approx(ensemble.result())
  assert results['ensemble']['count'] == 13 and 'unscored' not in results


def test_an_ensemble_of_a_model_with_itself_is_the_model(trained_workdir):
  _, workdir, data = trained_workdir
  member = predictor.from_workdir(str(workdir))
  names = protocols.unique_names([str(workdir), str(workdir)])
  assert names == [str(workdir), f'{workdir}#2']
  results = protocols.evaluate(dict(zip(names, (member, member))),
                               sources.get_source(f'folder:{data}'), 'test', '12', batch_size=8)
  assert results['ensemble'] == results['members'][names[0]] == results['members'][names[1]]


def test_real_scoring_by_hand():
  # Three examples; answers: {1}, {0, 2}, {} (no right answer: not scored).
  probabilities = np.array([[0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05]])
  labels = np.array([[0, 1, 0], [1, 0, 1], [0, 0, 0]], np.float32)
  answers, scored = protocols.right_answers(labels, np.ones(3), 3)
  assert scored.tolist() == [True, True, False]
  score = protocols.Score()
  score.add(probabilities, answers, scored)
  # Example 2's top class (2) is in its set; with 3 classes every top-5 holds an answer.
  assert score.result() == {'top1': 1.0, 'top5': 1.0, 'count': 2.0}
  score.add(np.array([[0.5, 0.2, 0.3]]), *protocols.right_answers(np.array([2]), np.ones(1), 3))
  assert score.result() == {'top1': 2 / 3, 'top5': 1.0, 'count': 3.0}


@pytest.fixture(scope='module')
def imagenet_member():
  """A 1,000-class tiny Xception with random weights."""
  model = models.create_model('xception', **models.Xception.tiny_options)
  return predictor.Predictor(model, random_variables(model), Preprocessing(71),
                             weights.imagenet_class_names())


REAL_SETS = ([], [3], [5, 7], [], [1], [0, 999], [], [2], [4], [6], [8])  # Three empty.


def real_examples(self, split, decoders=None, read_config=None, **kwargs):
  """ImageNet-ReaL as TFDS gives it, with hand-made label sets (the default mock's are never
  empty); images undecoded, as the input pipeline reads them."""
  del self, split, decoders, read_config, kwargs
  def generate():
    for i, labels in enumerate(REAL_SETS):
      yield {'image': tf.io.encode_png(np.full((9, 9, 3), i, np.uint8)).numpy(),
             'real_label': np.array(labels, np.int64), 'original_label': i,
             'file_name': f'{i}.JPEG'}
  return tf.data.Dataset.from_generator(generate, output_signature={
      'image': tf.TensorSpec([], tf.string), 'real_label': tf.TensorSpec([None], tf.int64),
      'original_label': tf.TensorSpec([], tf.int64), 'file_name': tf.TensorSpec([], tf.string)})


@pytest.mark.parametrize('dataset, split', [('imagenet2012', 'validation'),
                                            ('imagenet2012_real', 'validation'),
                                            ('imagenet_v2', 'test')])
def test_imagenets_evaluation_sets_by_name(imagenet_member, dataset, split):
  assert sources.evaluation_split(dataset) == split
  real = dataset == 'imagenet2012_real'
  with tfds.testing.mock_data(num_examples=11, as_dataset_fn=real_examples if real else None):
    source = sources.get_source(dataset)
    results = protocols.evaluate({'m': imagenet_member}, source, split, 'center', batch_size=8)
  assert source.num_classes == 1000 and source.label_sets == real
  empty = sum(not labels for labels in REAL_SETS) if real else 0
  # Images without a right answer are left out, as the ReaL paper does, and reported.
  assert results['members']['m']['count'] == 11 - empty
  assert results.get('unscored', 0) == empty


def test_bad_members_and_schemes_are_one_line_errors(imagenet_member, trained_workdir):
  _, _, data = trained_workdir
  source = sources.get_source(f'folder:{data}')
  with pytest.raises(ValueError, match=r'^m predicts 1000 classes; the data set has 4\.$'):
    protocols.evaluate({'m': imagenet_member}, source, 'test')
  with pytest.raises(ValueError, match=r"^Unknown crop scheme '6'"):
    protocols.evaluate({'m': imagenet_member}, source, 'test', '6')
