"""Single-process faults: kill -9 and resume, non-finite steps (damaged checkpoints:
test_workdir_safety.py)."""
import json
import random
import re
import time

import jax
import numpy as np
import pytest

from data_helpers import make_image_folder
from helpers import tiny_config
from run_helpers import checkpoint_steps, start_main, tiny_run_flags, wait_for_step
from xception_jax.trainer import sharding, train
from xception_jax.trainer.checkpoints import Checkpoints
from xception_jax.trainer.metric_writers import read_metrics

TOTAL_STEPS = 8


@pytest.mark.long(seconds=90)
def test_kill_9_at_random_steps_then_resume_is_bitwise_exact(tmp_path):
  data = make_image_folder(tmp_path / 'data', classes=4, per_class=10)  # 5 steps per epoch.
  common = dict(config__total_steps=TOTAL_STEPS,
                config__compilation_cache_dir=tmp_path / 'xla_cache')
  straight = start_main(tiny_run_flags(data, tmp_path / 'straight', **common),
                        log_path=tmp_path / 'straight.log')
  assert straight.wait(timeout=600) == 0, (tmp_path / 'straight.log').read_text()[-3000:]

  rng = random.Random(1234)
  workdir, figures, completed = tmp_path / 'killed', [], set()
  resume_from = 0
  for trial in range(2):
    log = tmp_path / f'trial{trial}.log'
    started = time.monotonic()
    process = start_main(tiny_run_flags(data, workdir, **common), log_path=log)
    kill_step = min(resume_from + rng.randint(1, 3), TOTAL_STEPS - 1)
    first_step_seen = wait_for_step(log, resume_from + 1, process)
    wait_for_step(log, kill_step, process)
    time.sleep(rng.uniform(0, 1.5))  # Land anywhere in a step or a checkpoint write.
    process.kill()
    process.wait()
    completed |= set(checkpoint_steps(workdir))
    text = log.read_text()
    last_logged = max(int(s) for s in re.findall(r'step (\d+)/\d+ \|', text))
    resumed = re.search(r'Resuming from the checkpoint at step (\d+)', text)
    assert int(resumed[1] if resumed else 0) == resume_from
    figures.append({'trial': trial, 'resumed_from': resume_from, 'killed_after_step': last_logged,
                    'seconds_to_first_step': round(first_step_seen - started, 1)})
    resume_from = max(checkpoint_steps(workdir), default=0)
    figures[-1]['steps_lost'] = last_logged - resume_from

  final = start_main(tiny_run_flags(data, workdir, **common), log_path=tmp_path / 'final.log')
  assert final.wait(timeout=600) == 0, (tmp_path / 'final.log').read_text()[-3000:]
  print('kill -9 trials:', json.dumps(figures))
  assert completed <= set(checkpoint_steps(workdir))  # No completed checkpoint was lost.
  expected, got = (Checkpoints(d / 'checkpoints').restore_arrays(TOTAL_STEPS)
                   for d in (tmp_path / 'straight', workdir))
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  # Resumed across epoch boundaries (5 steps per epoch), dropout on: the same evaluation too.
  assert json.loads((workdir / 'final_metrics.json').read_text()) == \
      json.loads((tmp_path / 'straight' / 'final_metrics.json').read_text())


def inject_nan_at(monkeypatch, step):
  """Makes the `step`-th global batch contain a NaN pixel (one step per call)."""
  real, calls = sharding.global_batch, {'n': 0}

  def global_batch(batch, mesh, **kwargs):
    calls['n'] += 1
    if calls['n'] == step:
      batch = dict(batch, image=batch['image'].copy())
      batch['image'].reshape(-1)[0] = np.nan
    return real(batch, mesh, **kwargs)

  monkeypatch.setattr(train.sharding, 'global_batch', global_batch)


@pytest.mark.long
def test_injected_nan_stops_the_run_and_keeps_checkpoints_intact(tmp_path, monkeypatch):
  root = make_image_folder(tmp_path / 'data', classes=4, per_class=4)
  config = tiny_config(dataset=f'folder:{root}', eval_split='test', total_steps=5,
                       checkpoint_every_steps=1)
  inject_nan_at(monkeypatch, 3)
  with pytest.raises(FloatingPointError, match=r'Non-finite loss or gradient at step 3 .*'
                                               r'latest: step 2'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  checkpoints = Checkpoints(tmp_path / 'run' / 'checkpoints')
  assert checkpoints.steps() == [1, 2]
  for step in checkpoints.steps():
    restored = checkpoints.restore_arrays(step)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored['params']))


@pytest.mark.long
def test_skip_mode_steps_over_a_non_finite_batch(tmp_path, monkeypatch):
  root = make_image_folder(tmp_path / 'data', classes=4, per_class=4)
  config = tiny_config(dataset=f'folder:{root}', eval_split='test', total_steps=4,
                       nonfinite_steps='skip')
  inject_nan_at(monkeypatch, 2)
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert np.isfinite(results['loss'])
  records = {r['step']: r for r in read_metrics(tmp_path / 'run')}
  assert records[2]['train/skipped_steps'] == 1 and 'train/skipped_steps' not in records[3]
