"""train_and_evaluate end to end: mock ImageNet on 8 devices, steps per call, fine-tuning, errors."""
import gc
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_helpers import make_image_folder
from helpers import random_variables, tiny_config
from xception_jax import models, weights
from xception_jax.models import layers as models_layers
from xception_jax.data import sources
from xception_jax.trainer import evaluate, sharding, train
from xception_jax.trainer.checkpoints import Checkpoints
from xception_jax.trainer.metric_writers import read_metrics
from xception_jax.trainer.state import TrainState, build_model


@pytest.mark.long(seconds=50)
@pytest.mark.all_devices
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


@pytest.mark.long(seconds=70)
def test_several_steps_per_call_train_as_one_step_per_call(tmp_path, monkeypatch):
  root = make_image_folder(tmp_path / 'data', classes=4, per_class=8)  # 32 images, 4 steps/epoch.
  setup = train.Setup(tiny_config(dataset=f'folder:{root}', total_steps=40, steps_per_call=4,
                                  log_every_steps=15, checkpoint_every_steps=20))
  lengths, step = [], 0
  while step < setup.num_steps:
    lengths.append(setup.call_length(step))
    step += lengths[-1]
  # Calls end at steps 15 (log), 20 (checkpoint), 30 (log) and 40 (checkpoint, end).
  assert lengths == [4, 4, 4, 3, 4, 1, 4, 4, 2, 4, 4, 2]
  # Global BN: per-device BN over one example each would amplify rounding chaotically.
  config = tiny_config(dataset=f'folder:{root}', eval_split='test', total_steps=3,
                       log_every_steps=2, checkpoint_every_steps=2, batch_norm='global')
  compiled_lengths = []
  train_steps = train.Setup.train_steps
  monkeypatch.setattr(train.Setup, 'train_steps', lambda self, abstract, n: (
      compiled_lengths.append(n), train_steps(self, abstract, n))[1])
  runs = {}
  for steps_per_call in (1, 2):   # 2: a call of two steps, then one of the last step.
    config.steps_per_call = steps_per_call
    runs[steps_per_call] = train.train_and_evaluate(config, str(tmp_path / str(steps_per_call)))
  assert compiled_lengths == [1, 2, 1]
  assert runs[2] == pytest.approx(runs[1], rel=1e-5, abs=1e-6)
  logged = {n: read_metrics(tmp_path / str(n)) for n in runs}
  assert [r['step'] for r in logged[2]] == [r['step'] for r in logged[1]] == [2, 3]
  for one, several in zip(logged[1], logged[2]):
    for key in ('train/loss', 'train/accuracy', 'train/grad_norm', 'train/learning_rate'):
      assert several[key] == pytest.approx(one[key], rel=1e-5), key
  final = [Checkpoints(tmp_path / str(n) / 'checkpoints').restore_arrays(3) for n in runs]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), *final)
  assert Checkpoints(tmp_path / '2' / 'checkpoints').steps() == [2, 3]


@pytest.mark.parametrize('backend, expected', [('cpu', 'float32'), ('gpu', 'bfloat16'),
                                               ('tpu', 'bfloat16')])
def test_dtype_auto_computes_in_bfloat16_on_gpu_and_tpu_and_float32_on_cpu(
    backend, expected, monkeypatch, caplog):
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  config = tiny_config()
  assert config.dtype == 'auto'   # The default.
  with caplog.at_level('INFO'):
    model = build_model(config, num_classes=3)
  assert np.dtype(model.dtype) == np.dtype(expected) and model.param_dtype == jnp.float32
  assert f'dtype auto: {expected} compute on {backend} (parameters float32).' in caplog.text
  config.dtype = 'float32'   # An explicit choice stays.
  assert build_model(config, num_classes=3).dtype == jnp.float32


def test_stack_batches_adds_a_leading_axis_and_copies_only_several():
  batches = [{'image': np.full((2, 3), i, np.float32), 'label': np.array([i, i])} for i in range(3)]
  one = train.stack_batches(batches[:1])
  assert one['image'].shape == (1, 2, 3) and np.shares_memory(one['image'], batches[0]['image'])
  several = train.stack_batches(batches)
  assert several['image'].shape == (3, 2, 3) and several['label'].tolist() == [[0, 0], [1, 1], [2, 2]]


@pytest.mark.long(seconds=11)
def test_fine_tuning_from_converted_weights_with_other_classes(tmp_path):
  pretrained_model = models.create_model('xception', num_classes=7, width_multiplier=0.25,
                                         middle_flow_repeats=1)
  pretrained = random_variables(pretrained_model, 71, seed=42)
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


@pytest.mark.long
def test_eval_only_on_converted_weights_and_on_a_checkpoint(tmp_path):
  root = make_image_folder(tmp_path / 'data', classes=4, per_class=3)
  model = models.create_model('xception', num_classes=4, width_multiplier=0.25,
                              middle_flow_repeats=1)
  weights.save_variables(random_variables(model, 71), tmp_path / 'w')
  config = tiny_config(dataset=f'folder:{root}', eval_split='test', eval_batch_size=8,
                       init_from=str(tmp_path / 'w'), eval_only=True)
  results = evaluate.evaluate_only(config, str(tmp_path / 'eval'))
  assert results['count'] == 12 and 'top1_ema' not in results
  config = tiny_config(dataset=f'folder:{root}', eval_split='test', total_steps=2)
  trained = train.train_and_evaluate(config, str(tmp_path / 'run'))
  again = evaluate.evaluate_only(config, str(tmp_path / 'run'))
  assert again == trained


def test_a_run_exempts_its_compiled_objects_from_collection_until_it_returns(tmp_path,
                                                                          monkeypatch):
  """Full collections scanning the modules and programs of a run took a core from XLA's
  threads mid-step; what exists once a step is compiled is exempt while the run goes on."""
  root = make_image_folder(tmp_path / 'data', classes=2, per_class=4)
  frozen_at_writes, write = [], train.MetricWriter.write
  monkeypatch.setattr(train.MetricWriter, 'write', lambda self, step, values: (
      frozen_at_writes.append(gc.get_freeze_count()), write(self, step, values))[1])
  assert gc.get_freeze_count() == 0
  train.train_and_evaluate(tiny_config(dataset=f'folder:{root}', eval_split='test',
                                       total_steps=2), str(tmp_path / 'run'))
  assert len(frozen_at_writes) == 3   # Steps 1 and 2, then the evaluation.
  assert min(frozen_at_writes) > 10_000   # Modules, jitted programs, caches.
  assert gc.get_freeze_count() == 0


def test_evaluators_that_agree_share_one_jitted_step(tmp_path):
  """A run's extra evaluation sets with the same classes, or a later run in the same process,
  reuse the evaluation step's trace and compilation; other classes get their own."""
  config = tiny_config(eval_split='test')
  mesh = sharding.make_mesh()
  model = build_model(config, num_classes=4)
  four, again = (evaluate.Evaluator(model, sources.FolderSource(make_image_folder(
      tmp_path / name, classes=4, per_class=1)), config, mesh) for name in ('a', 'b'))
  three = evaluate.Evaluator(model.clone(num_classes=3), sources.FolderSource(make_image_folder(
      tmp_path / 'c', classes=3, per_class=1)), config, mesh)
  assert four.step is again.step and three.step is not four.step


@pytest.mark.parametrize('overrides, message', [
    (dict(batch_size=12), 'batch_size 12 does not divide over 8 devices'),
    (dict(dataset='no_such_dataset_abc'), "Unknown dataset 'no_such_dataset_abc'"),
    (dict(image_size=64), 'image_size 64 is below the minimum of xception'),
    (dict(steps_per_call=0), r'^steps_per_call must be an integer >= 1, got 0\.$'),
])
@pytest.mark.all_devices
def test_bad_configs_fail_with_clear_messages(tmp_path, overrides, message):
  root = make_image_folder(tmp_path / 'data', classes=2, per_class=8, splits=('train',))
  config = tiny_config(dataset=f'folder:{root}')
  config.update(overrides)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / 'checkpoints').exists() or \
      not list((tmp_path / 'run' / 'checkpoints').iterdir())


def test_train_state_fields_are_what_checkpoints_hold():
  assert [f for f in TrainState.__dataclass_fields__] == [
      'step', 'params', 'batch_stats', 'opt_state', 'ema_params', 'ema_batch_stats', 'rng']


def test_a_compiler_option_xla_rejects_is_one_line_before_the_workdir_is_written(tmp_path):
  workdir = tmp_path / 'run'
  with pytest.raises(ValueError, match=r"^XLA rejects the compiler option xla_no_such_option=1 "
                                       r"\(.*No such compile option.*\); remove it from "
                                       r"compiler_options or correct it\.$"):
    train.train_and_evaluate(tiny_config(dataset='digits', compiler_options='xla_no_such_option=1'),
                             str(workdir))
  assert list(workdir.iterdir()) == []


def test_the_state_is_initialised_by_cheaply_generated_code_with_the_same_values(tmp_path,
                                                                                monkeypatch):
  root = make_image_folder(tmp_path / 'data', classes=2, per_class=4, splits=('train',))
  traces, create = [], train.create_train_state
  monkeypatch.setattr(train, 'create_train_state', lambda *args, **kwargs: (
      traces.append(1), create(*args, **kwargs))[1])
  setup = train.Setup(tiny_config(dataset=f'folder:{root}'))
  options, jit = [], jax.jit
  monkeypatch.setattr(train.jax, 'jit', lambda f, **kwargs: (
      options.append(kwargs.get('compiler_options')), jit(f, **kwargs))[1])
  setup.init_state(setup.abstract_state())
  monkeypatch.undo()
  assert options == [{'xla_backend_optimization_level': 0}]   # LLVM at -O0 on CPU.
  assert len(traces) == 1   # One trace of the initialisation serves the abstract state too.
  # Every model initialises its kernels with KERNEL_INIT and the rest with constants; the
  # values do not depend on the optimisation (the whole tiny state's do not either, but its
  # optimised compile alone takes 9 s).
  cheap, optimised = (jax.jit(lambda key: models_layers.KERNEL_INIT(key, (3, 3, 32, 64)),
                              compiler_options={'xla_backend_optimization_level': level,
                                                'xla_cpu_use_fusion_emitters': bool(level)})(
                                  jax.random.PRNGKey(0)) for level in (0, 3))
  np.testing.assert_array_equal(cheap, optimised)
