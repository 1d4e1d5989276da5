"""A workdir is never reset, mixed or shared: config changes on resume, a second run, full disks.

Every refusal leaves the workdir's checkpoints byte-for-byte as they were.
"""
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time

import pytest

from run_helpers import REPO
from xception_jax.trainer import checkpoints as checkpoints_module
from xception_jax.trainer import train
from xception_jax.trainer.checkpoints import CheckpointWriteError, Checkpoints, StructureMismatch
from xception_jax.trainer.metric_writers import read_metrics
from xception_jax.trainer.workdir_lock import LOCK_FILE, WorkdirBusy, WorkdirLock

# After the failed checkpoint write, TensorStore's callbacks of the save's other writes reach
# Orbax's closed event loop, in whichever test runs next (main.py keeps them off the console
# with checkpoints.silence_failed_write_noise).
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


@pytest.fixture
def trained(trained_workdir):
  """The session's shared tiny workdir (checkpoints at steps 2 and 4) and its config."""
  config, workdir, _ = trained_workdir
  assert Checkpoints(workdir / 'checkpoints').steps() == [2, 4]
  return config, workdir


@pytest.fixture
def workdir(trained, tmp_path):
  shutil.copytree(trained[1], tmp_path / 'run')
  return tmp_path / 'run'


def config_of(trained, **changes):
  config = trained[0].copy_and_resolve_references()
  for name, value in changes.items():
    node, _, leaf = name.rpartition('.')
    (config if not node else config[node])[leaf] = value
  return config


def file_hashes(directory):
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob('*')) if p.is_file()}


def refused(config, workdir, error=ValueError):
  """The one-line message of the error `train_and_evaluate` raises; asserts that the
  checkpoints and the saved config did not change and that no lock was left behind."""
  before = file_hashes(workdir)
  with pytest.raises(error) as raised:
    train.train_and_evaluate(config, str(workdir))
  assert file_hashes(workdir) == before
  assert not (workdir / LOCK_FILE).exists()
  message = str(raised.value)
  assert '\n' not in message
  return message


@pytest.mark.long(seconds=25)  # The first to run trains the shared workdir.
@pytest.mark.parametrize('changes, described', [
    ({'model_kwargs.fc_layers': (8,)}, "model_kwargs.fc_layers: (default) -> [8]"),
    ({'optimizer': 'adam'}, "optimizer: 'sgd' -> 'adam'"),
    ({'model_kwargs.middle_flow_repeats': 2}, 'model_kwargs.middle_flow_repeats: 1 -> 2'),
])
def test_a_change_of_the_states_structure_is_refused(trained, workdir, changes, described):
  message = refused(config_of(trained, **changes), workdir)
  assert message.startswith(f'{workdir} holds checkpoints up to step 4 of another config, '
                            f'whose state has another structure ({described})')
  assert 'use a new workdir' in message


def truncate_files(directory) -> int:
  count = 0
  for path in directory.rglob('*'):
    if path.is_file() and path.stat().st_size > 64:
      data = path.read_bytes()
      path.write_bytes(data[:len(data) // 2])
      count += 1
  return count


@pytest.mark.long(seconds=15)
def test_a_truncated_latest_checkpoint_is_set_aside_and_the_previous_used(trained, workdir,
                                                                          caplog):
  assert truncate_files(workdir / 'checkpoints' / '4') > 0
  with caplog.at_level('WARNING'):
    train.train_and_evaluate(config_of(trained, total_steps=6, keep_checkpoints=2),
                             str(workdir))
  assert re.search(r'Checkpoint at step 4 .* is unreadable .*falling back', caplog.text)
  assert (workdir / 'checkpoints' / '4.damaged').is_dir()
  # 4 trained again from 2; the newest two of 2, 4 and 6 are kept, the damaged one set aside.
  assert Checkpoints(workdir / 'checkpoints').steps() == [4, 6]
  assert [r['step'] for r in read_metrics(workdir) if 'train/loss' in r] == [1, 2, 3, 4, 5, 6]


def test_without_a_saved_config_a_structure_mismatch_is_not_damage(trained, workdir):
  (workdir / 'config.json').unlink()  # A workdir from before configs were compared.
  message = refused(config_of(trained, **{'model_kwargs.fc_layers': (8,)}), workdir,
                    StructureMismatch)
  assert message.startswith(f'The checkpoint at step 4 in {workdir / "checkpoints"} holds a '
                            'state of another structure than this config builds (')
  assert 'head/fc1/kernel (not in the checkpoint)' in message
  assert not list((workdir / 'checkpoints').glob('*.damaged'))


@pytest.mark.long(seconds=15)
def test_a_change_of_a_steps_meaning_needs_resume_with_changes(trained, workdir):
  message = refused(config_of(trained, batch_size=16, seed=3), workdir)
  assert message == (f'{workdir} holds checkpoints up to step 4 of another config '
                     '(batch_size: 8 -> 16; seed: 0 -> 3): these change what a step means; to '
                     'resume anyway, pass --config.resume_with_changes=batch_size,seed.')
  # Named, a change is accepted and recorded; logging and the run's length change freely.
  config = config_of(trained, seed=3, resume_with_changes='seed', total_steps=6,
                     log_every_steps=2)
  train.train_and_evaluate(config, str(workdir))
  assert Checkpoints(workdir / 'checkpoints').steps() == [2, 4, 6]
  records = [json.loads(line) for line in (workdir / 'config_changes.jsonl').read_text().splitlines()]
  assert [(r['step'], r['changes']) for r in records] == [(4, {'seed': {'old': 0, 'new': 3}})]
  assert [r['step'] for r in read_metrics(workdir) if 'train/loss' in r] == [1, 2, 3, 4, 6]


HOLDER = '''
import sys, time
from xception_jax.trainer.workdir_lock import WorkdirLock, WorkdirBusy
start, lock = float(sys.argv[2]), WorkdirLock(sys.argv[1])
time.sleep(max(0.0, start - time.time()))
try:
  lock.acquire()
except WorkdirBusy as e:
  print('busy:', e, flush=True)
  sys.exit(3)
print('held', flush=True)
time.sleep(float(sys.argv[3]))
lock.release()
'''


def start_holder(directory, start, hold_seconds):
  return subprocess.Popen([sys.executable, '-c', HOLDER, str(directory), str(start),
                           str(hold_seconds)], cwd=REPO, stdout=subprocess.PIPE, text=True)


def test_two_processes_started_together_one_holds_the_workdir(tmp_path):
  start = time.time() + 3  # Both import first, then race for the lock at the same moment.
  holders = [start_holder(tmp_path, start, 2) for _ in range(2)]
  outputs = [h.communicate(timeout=60)[0] for h in holders]
  assert sorted(h.returncode for h in holders) == [0, 3], outputs
  busy = next(o for o in outputs if o.startswith('busy:'))
  winner = holders[[h.returncode for h in holders].index(0)]
  assert f'process {winner.pid}, started ' in busy
  assert not (tmp_path / LOCK_FILE).exists()  # Released at the end.


def test_a_run_stops_on_a_held_workdir_and_takes_over_a_dead_holders_lock(trained, workdir,
                                                                         caplog):
  holder = start_holder(workdir, 0, 600)
  assert holder.stdout.readline().strip() == 'held'
  before = file_hashes(workdir / 'checkpoints')
  with pytest.raises(WorkdirBusy) as raised:
    train.train_and_evaluate(trained[0], str(workdir))
  assert str(raised.value).startswith(f'Workdir {workdir} is in use by another run (host ')
  assert f'process {holder.pid}, started ' in str(raised.value)
  assert file_hashes(workdir / 'checkpoints') == before
  holder.kill()
  holder.wait()
  with caplog.at_level('WARNING'):
    train.train_and_evaluate(trained[0], str(workdir))  # Already at step 4: evaluates only.
  assert 'Taking over the stale lock of host' in caplog.text
  assert 'its process is gone' in caplog.text
  assert not (workdir / LOCK_FILE).exists()


def test_another_hosts_lock_is_stale_only_when_not_refreshed(tmp_path):
  (tmp_path / LOCK_FILE).write_text(json.dumps({'host': 'elsewhere', 'pid': 1, 'started': 0}))
  with pytest.raises(WorkdirBusy, match='host elsewhere, process 1'):
    WorkdirLock(tmp_path, stale_seconds=60).acquire()
  old = time.time() - 120
  os.utime(tmp_path / LOCK_FILE, (old, old))
  lock = WorkdirLock(tmp_path, stale_seconds=60)
  lock.acquire()
  assert json.loads((tmp_path / LOCK_FILE).read_text())['token'] == lock.token
  lock.release()
  assert not (tmp_path / LOCK_FILE).exists()


@pytest.mark.long(seconds=15)
def test_too_little_free_space_stops_before_writing(trained, workdir, monkeypatch):
  usage = shutil.disk_usage(workdir)
  monkeypatch.setattr(checkpoints_module.shutil, 'disk_usage',
                      lambda path: usage._replace(free=1 << 20))
  before = file_hashes(workdir / 'checkpoints')
  with pytest.raises(CheckpointWriteError) as raised:
    train.train_and_evaluate(config_of(trained, total_steps=6), str(workdir))
  assert str(raised.value).startswith(
      f'Not enough space for the checkpoint of step 6 in {workdir / "checkpoints"}: it needs '
      'about ')
  assert str(raised.value).endswith(', 1 MiB are free; the latest intact checkpoint is step 4 '
                                    '(rerun the command to resume from it).')
  assert file_hashes(workdir / 'checkpoints') == before


@pytest.fixture
def file_size_limit():
  """Files this process writes stop growing at 1 MiB (EFBIG, as a full disk's ENOSPC)."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  def limit(size):
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
  yield limit
  resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.long(seconds=15)
def test_a_failed_checkpoint_write_is_one_line_and_leaves_no_temporary_files(
    trained, workdir, file_size_limit):
  before = file_hashes(workdir / 'checkpoints')
  config = config_of(trained, total_steps=6)
  file_size_limit(1 << 20)
  with pytest.raises(CheckpointWriteError) as raised:
    train.train_and_evaluate(config, str(workdir))
  assert str(raised.value) == (
      f'Saving the checkpoint of step 6 in {workdir / "checkpoints"} failed (File too large); '
      'its temporary files were removed; the latest intact checkpoint is step 4 (rerun the '
      'command to resume from it).')
  assert file_hashes(workdir / 'checkpoints') == before
  assert not (workdir / LOCK_FILE).exists()


def test_an_unwritable_metrics_file_is_one_line_naming_it(trained, workdir):
  (workdir / 'metrics.jsonl').unlink()
  (workdir / 'metrics.jsonl').mkdir()
  message = refused(config_of(trained, total_steps=6), workdir, OSError)
  assert message == (f'Writing {workdir / "metrics.jsonl"} failed (Is a directory); the latest '
                     'intact checkpoint is step 4 (rerun the command to resume from it).')


@pytest.mark.long(seconds=15)
def test_with_bad_images_skip_a_run_trains_and_counts_them(trained, tmp_path):
  data = tmp_path / 'data'
  shutil.copytree(trained[0].dataset[len('folder:'):], data)
  jpeg = (data / 'train' / 'class_0' / '000.png').read_bytes()
  for split in ('train', 'test'):  # Valid PNG headers, cut short: found only when decoded.
    (data / split / 'class_1' / 'cut.png').write_bytes(jpeg[:len(jpeg) // 2])
  config = config_of(trained, dataset=f'folder:{data}', bad_images='skip', total_steps=6)
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert (results['count'], results['skipped_images']) == (16, 1)
  skipped = [r['train/skipped_images'] for r in read_metrics(tmp_path / 'run')
             if 'train/skipped_images' in r]
  assert skipped and skipped == sorted(skipped) and skipped[-1] >= 1


@pytest.mark.all_devices
def test_a_save_on_eight_cpu_devices_writes_each_array_whole(tmp_path, monkeypatch):
  """On CPU one replica writes each replicated array: no slice per device to compile."""
  import flax
  import jax
  import numpy as np

  class State(flax.struct.PyTreeNode):
    step: jax.Array
    w: jax.Array

  replicated = jax.sharding.NamedSharding(jax.make_mesh((8,), ('data',)),
                                          jax.sharding.PartitionSpec())
  state = jax.device_put(State(np.int32(1), np.arange(64, dtype=np.float32).reshape(8, 8)),
                         replicated)
  checkpoints = Checkpoints(tmp_path / 'checkpoints', async_save=False)
  monkeypatch.setattr(jax.lax, 'slice_in_dim', lambda *args, **kwargs: pytest.fail('sliced'))
  checkpoints.save(state)
  np.testing.assert_array_equal(checkpoints.restore_arrays(1)['w'], np.asarray(state.w))
