"""Several processes on 127.0.0.1 (jax.distributed, gloo): equivalence and preemption."""
import json
import re
import signal

import jax
import numpy as np
import pytest

from data_helpers import make_image_folder
from run_helpers import checkpoint_steps, start_launcher, tiny_run_flags, wait_for_step
from xception_jax.checkpoints import Checkpoints


def test_two_processes_of_two_devices_equal_one_process_of_four(tmp_path):
  data = make_image_folder(tmp_path / 'data', classes=4, per_class=10)
  runs = {}
  for processes, devices in ((2, 2), (1, 4)):
    workdir = tmp_path / f'{processes}x{devices}'
    log = tmp_path / f'{processes}x{devices}.log'
    launcher = start_launcher(tiny_run_flags(data, workdir, config__total_steps=3), processes,
                              devices, log)
    assert launcher.wait(timeout=900) == 0, log.read_text()[-4000:]
    runs[processes] = (Checkpoints(workdir / 'checkpoints').restore_arrays(3),
                       json.loads((workdir / 'final_metrics.json').read_text()))
  (two, two_eval), (one, one_eval) = runs[2], runs[1]
  start = Checkpoints(tmp_path / '1x4' / 'checkpoints').restore_arrays(1)  # For update scales.
  # The same global batches, in the same order; only float32 summation order differs.
  for a, b in zip(jax.tree.leaves(two['params']), jax.tree.leaves(one['params'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(two['batch_stats']), jax.tree.leaves(one['batch_stats'])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert int(two['step']) == int(one['step']) == 3 and start is not None
  assert two_eval['count'] == one_eval['count'] == 40
  for key in ('top1', 'top5', 'top1_ema', 'top5_ema'):
    assert abs(two_eval[key] - one_eval[key]) <= 1 / 40  # At most one borderline example.
  assert two_eval['loss'] == pytest.approx(one_eval['loss'], rel=1e-3)


def test_sigterm_stops_both_processes_at_one_checkpoint_and_the_rerun_completes(tmp_path):
  data = make_image_folder(tmp_path / 'data', classes=4, per_class=10)
  workdir, log = tmp_path / 'run', tmp_path / 'run.log'
  flags = tiny_run_flags(data, workdir, config__total_steps=200,
                         config__checkpoint_every_steps=1000)
  launcher = start_launcher(flags, 2, 2, log)
  wait_for_step(log, 3, launcher)
  launcher.send_signal(signal.SIGTERM)
  assert launcher.wait(timeout=300) == 0, log.read_text()[-4000:]
  stops = {int(p): int(s) for p, s in re.findall(r'Process (\d) preempted at step (\d+)',
                                                 log.read_text())}
  assert sorted(stops) == [0, 1] and stops[0] == stops[1]  # Both stopped, at one step.
  assert checkpoint_steps(workdir) == [stops[0]]
  rerun = start_launcher(tiny_run_flags(data, workdir, config__total_steps=stops[0] + 2,
                                        config__checkpoint_every_steps=1000),
                         2, 2, tmp_path / 'rerun.log')
  assert rerun.wait(timeout=600) == 0, (tmp_path / 'rerun.log').read_text()[-4000:]
  text = (tmp_path / 'rerun.log').read_text()
  assert f'Resuming from the checkpoint at step {stops[0]}' in text
  assert 'Finished xception' in text
  assert checkpoint_steps(workdir) == [stops[0], stops[0] + 2]
