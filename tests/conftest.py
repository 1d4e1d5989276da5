"""Test-wide settings; they must be in place before jax, keras or tensorflow load."""
import os
import tempfile

# Keras is the reference implementation; run it on the JAX backend like our models.
os.environ.setdefault('KERAS_BACKEND', 'jax')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Eight host devices let sharding tests run on a CPU-only machine.
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()
# Compile-bound tests: see run_helpers.FAST_COMPILE_XLA_FLAGS.
from run_helpers import FAST_COMPILE_XLA_FLAGS  # noqa: E402 (imports neither jax nor keras)
os.environ['XLA_FLAGS'] += ' ' + FAST_COMPILE_XLA_FLAGS
# One persistent XLA cache per session, shared by the xdist workers and the training
# processes the tests start (they inherit the environment): the many short training runs
# of the same tiny model compile each step once instead of once per run.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='xception-jax-xla-'))
# Cache every compile, not only those over a second: a training process then loads its
# small jitted functions too (a warm tiny run: 12.0 -> 10.7 s).
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


import fcntl  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def made_once_per_session(tmp_path_factory, name: str, make) -> Path:
  """A directory `make(directory)` filled once per test session: the xdist workers share it
  (the first to take its file lock makes it, the others wait). Tests must not change it."""
  base = tmp_path_factory.getbasetemp()
  # Under xdist each worker's base is a sub-directory of the session's.
  shared = (base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base) / name
  shared.mkdir(exist_ok=True)
  with open(shared / 'lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (shared / 'done').exists():
      make(shared)
      (shared / 'done').touch()
  return shared


@pytest.fixture(scope='session')
def trained_workdir(tmp_path_factory):
  """(config, workdir, data folder) of a tiny run: checkpoints at steps 2 and 4 of a
  0.25-width Xception on a 4-class image folder (16 training, 16 test images), evaluated on
  its test split and, as the extra set 'again', on the same split once more.

  Trained once per test session. Tests must not change it: copy it first.
  """
  from data_helpers import make_image_folder
  from helpers import tiny_config
  from xception_jax.trainer import train

  config_for = lambda data: tiny_config(
      dataset=f'folder:{data}', eval_split='test', total_steps=4, checkpoint_every_steps=2,
      eval_datasets=f'again=folder:{data}@test')

  def make(shared):
    data = shared / 'data'
    make_image_folder(data, classes=4, per_class=4)  # 2 steps per epoch.
    # On one device like the tests' own runs (trainer_mesh_of_one_device says why): session
    # fixtures are made before that per-test fixture is in place.
    with pytest.MonkeyPatch.context() as patch:
      one_device_mesh(patch)
      train.train_and_evaluate(config_for(data), str(shared / 'run'))

  shared = made_once_per_session(tmp_path_factory, 'trained_workdir', make)
  return config_for(shared / 'data'), shared / 'run', shared / 'data'


@pytest.fixture(scope='session')
def digits_data_dir(tmp_path_factory) -> str:
  """A `data_dir` holding the bundled digits' image folders ('digits', 'digits_multilabel'),
  written once per test session."""
  from xception_jax.data import sources

  def make(shared):
    sources.write_digits_folder(shared / 'digits')
    sources.write_digit_grids_folder(shared / 'digits_multilabel')

  return str(made_once_per_session(tmp_path_factory, 'digits_data_dir', make))


@pytest.fixture(scope='session', autouse=True)
def keras_initial_values_from_numpy():
  """Keras models, the references and those our converter loads, start from numpy-made
  values (keras_helpers.numpy_initial_values says why)."""
  from keras_helpers import numpy_initial_values
  with numpy_initial_values():
    yield


@pytest.fixture(autouse=True)
def trainer_mesh_of_one_device(request, monkeypatch):
  """The trainer's mesh is the first device, unless a test is marked `all_devices`.

  What sharding does is tested where it is the point (marked tests, test_steps.py's own
  meshes, the multi-process runs); elsewhere a tiny run on eight virtual CPU devices only
  pays for cross-device traffic on two cores (a warm 4-step run: 16 s instead of 9 s).
  """
  if not request.node.get_closest_marker('all_devices'):
    one_device_mesh(monkeypatch)


def one_device_mesh(monkeypatch) -> None:
  """Makes the trainer's mesh the first device alone."""
  import jax
  import numpy as np
  from xception_jax.trainer import sharding
  monkeypatch.setattr(sharding, 'make_mesh', lambda: jax.sharding.Mesh(
      np.asarray(jax.devices()[:1]), (sharding.DATA_AXIS,)))


def expected_seconds(item) -> float:
  """A test's `long` mark's `seconds` (20 if it names none), 0 for tests not marked long."""
  mark = item.get_closest_marker('long')
  return 0.0 if mark is None else float(mark.kwargs.get('seconds', 20))


def pytest_collection_modifyitems(items):
  """Longest first (`long` marks, then the rest in their order): the two xdist workers, which
  take work from each other's queues (pyproject: --dist=worksteal), then end together."""
  items.sort(key=lambda item: -expected_seconds(item))
