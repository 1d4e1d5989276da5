"""Several processes on 127.0.0.1 (jax.distributed, gloo): equivalence, resume, preemption."""
import json
import re
import signal

import jax
import numpy as np
import pytest

from data_helpers import make_image_folder
from run_helpers import checkpoint_steps, start_launcher, tiny_run_flags, wait_for_step
from xception_jax.trainer.checkpoints import Checkpoints
from xception_jax.trainer.metric_writers import read_metrics


def max_difference(a, b) -> float:
  """Largest |a − b| over the leaves of two trees."""
  return max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b)))


@pytest.mark.long(seconds=110)
def test_two_processes_equal_one_resume_and_stop_together_on_sigterm(tmp_path):
  """2 processes × 2 devices train as 1 × 4; the 2-process run resumes from its checkpoint,
  and on SIGTERM both processes stop at one step with a readable checkpoint there."""
  data = make_image_folder(tmp_path / 'data', classes=4, per_class=10)
  # Global-batch BN and a small learning rate keep the comparison readable: float32
  # summation-order noise is ~1e-7 after one step, and BN's backward pass (a long, cancelling
  # reduction) amplifies it with every step in proportion to the learning rate. At 0.005 the
  # parameters and BN variances differed by up to 1.1e-3 after three steps on an AMD CPU;
  # at 0.001, on the same CPU, by 9e-6 and 4e-5, so bars of 2e-4 leave room for other CPUs.
  flags = dict(config__total_steps=3, config__batch_size=16, config__batch_norm='global',
               config__learning_rate=0.001)
  runs = {}
  for processes, devices in ((2, 2), (1, 4)):
    workdir = tmp_path / f'{processes}x{devices}'
    log = tmp_path / f'{processes}x{devices}.log'
    launcher = start_launcher(tiny_run_flags(data, workdir, **flags), processes, devices, log)
    assert launcher.wait(timeout=900) == 0, log.read_text()[-4000:]
    checkpoints = Checkpoints(workdir / 'checkpoints')
    runs[processes] = {'step1': checkpoints.restore_arrays(1),
                       'step3': checkpoints.restore_arrays(3),
                       'train': [r['train/loss'] for r in read_metrics(workdir)
                                 if 'train/loss' in r],
                       'eval': json.loads((workdir / 'final_metrics.json').read_text())}
  two, one = runs[2], runs[1]
  # The same global batches in the same order: equal losses, step after step.
  np.testing.assert_allclose(two['train'][:2], one['train'][:2], rtol=1e-5)
  np.testing.assert_allclose(two['train'], one['train'], rtol=1e-4)
  after_one = max_difference(two['step1']['params'], one['step1']['params'])
  after_three = max_difference(two['step3']['params'], one['step3']['params'])
  print(f'2x2 vs 1x4: max abs parameter difference after 1 step {after_one:.2e}, '
        f'after 3 steps {after_three:.2e}')
  assert after_one < 1e-5
  assert after_three < 2e-4
  assert max_difference(two['step3']['batch_stats'], one['step3']['batch_stats']) < 2e-4
  assert two['eval']['count'] == one['eval']['count'] == 40
  for key in ('top1', 'top5', 'top1_ema', 'top5_ema'):
    assert abs(two['eval'][key] - one['eval'][key]) <= 1 / 40  # At most one borderline example.
  assert two['eval']['loss'] == pytest.approx(one['eval']['loss'], rel=1e-3)

  # The same 2-process command with more steps resumes at step 3; SIGTERM after its first new
  # step stops both processes at one step, saved there though no checkpoint was due.
  workdir, log = tmp_path / '2x2', tmp_path / 'resumed.log'
  launcher = start_launcher(tiny_run_flags(data, workdir, **{
      **flags, 'config__total_steps': 200, 'config__checkpoint_every_steps': 1000}), 2, 2, log)
  wait_for_step(log, 4, launcher)
  launcher.send_signal(signal.SIGTERM)
  assert launcher.wait(timeout=300) == 0, log.read_text()[-4000:]
  text = log.read_text()
  assert 'Resuming from the checkpoint at step 3' in text
  stops = {int(p): int(s) for p, s in re.findall(r'Process (\d) preempted at step (\d+)', text)}
  assert sorted(stops) == [0, 1] and stops[0] == stops[1] > 3  # Both stopped, at one step.
  assert checkpoint_steps(workdir) == [1, 2, 3, stops[0]]
  preempted = Checkpoints(workdir / 'checkpoints').restore_arrays(stops[0])
  assert int(preempted['step']) == stops[0]
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(preempted['params']))
  assert max_difference(preempted['params'], two['step3']['params']) > 0  # It trained on.
