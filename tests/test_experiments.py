"""The experiment tools: training-profile plots, the size/speed report, sweeps over configs."""
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from helpers import REFERENCE_PARAMETER_COUNTS
from run_helpers import REPO
from xception_jax import models
from xception_jax.tools import plot, report, sweep
from xception_jax.trainer.metric_writers import MetricWriter

def write_run(workdir, evals, resumed_at=None):
  """A workdir's metrics as the trainer writes them: train records, then {step: top1_ema}."""
  workdir.mkdir()
  writer = MetricWriter(workdir)
  for step, value in evals.items():
    writer.write(step, {'train/loss': 1.0 / step, 'train/images_per_second': 100.0})
    writer.write(step, {'eval/top1_ema': value, 'eval/count': 355})
  if resumed_at is not None:  # A restarted run logs the step again; the last record counts.
    writer.write(resumed_at, {'eval/top1_ema': evals[resumed_at] + 0.01})
  writer.close()
  return workdir


def test_plot_command_draws_a_line_per_run(tmp_path):
  runs = {'xception': {45: 0.2, 90: 0.6, 135: 0.9},
          'no_residual': {45: 0.1, 90: 0.4, 135: 0.7},
          'inception_v3': {45: 0.15, 90: 0.5}}
  workdirs = [str(write_run(tmp_path / name, evals, resumed_at=90 if name == 'xception' else
                            None)) for name, evals in runs.items()]
  out = tmp_path / 'profile.png'
  result = subprocess.run([sys.executable, '-m', 'xception_jax.plot', *workdirs,
                           '--metric=eval/top1_ema', f'--out={out}'], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  import matplotlib.image
  assert matplotlib.image.imread(out).shape == (420, 640, 4)
  # The figure's data: one line per run, named by its workdir, in percent against steps.
  figure = plot.profile_figure(workdirs, 'eval/top1_ema')
  axes = figure.axes[0]
  lines = axes.get_lines()
  assert [line.get_label() for line in lines] == list(runs)
  assert [t.get_text() for t in axes.get_legend().get_texts()] == list(runs)
  np.testing.assert_array_equal(lines[0].get_xdata(), [45, 90, 135])
  np.testing.assert_allclose(lines[0].get_ydata(), [20, 61, 90])  # Step 90 as resumed.
  np.testing.assert_allclose(lines[2].get_ydata(), [15, 50])
  assert axes.get_xlabel() == 'Gradient descent steps'


def test_plot_errors_name_what_is_there(tmp_path):
  workdir = write_run(tmp_path / 'run', {10: 0.5})
  with pytest.raises(ValueError, match="never logged 'eval/map100'; it logged: eval/count, "
                                       "eval/top1_ema, train/images_per_second, train/loss"):
    plot.profile(workdir, 'eval/map100')
  with pytest.raises(ValueError, match='has no metrics.jsonl'):
    plot.profile(tmp_path, 'eval/top1_ema')
  with pytest.raises(ValueError, match='1 labels for 2 workdirs'):
    plot.profile_figure([workdir, workdir], 'eval/top1_ema', labels=['x'])


def test_report_parameter_counts_are_the_references():
  assert set(REFERENCE_PARAMETER_COUNTS) == set(models.list_models())
  for name, expected in REFERENCE_PARAMETER_COUNTS.items():
    assert report.full_size_parameters(name) == expected, name


def test_report_rows_count_parameters_at_full_size(monkeypatch):
  timed = []
  monkeypatch.setattr(report, 'measure_training',
                      lambda config, *args: timed.append((config, args)) or (2.0, 5.0))
  options = models.model_class('xception').tiny_options
  rows = report.report(['xception'], batch_size=8, image_size=71, num_steps=3, options=options)
  config, args = timed[0]   # The trainer's step for this config (timing.training_step).
  assert (config.model, config.batch_size, config.image_size, args) == ('xception', 8, 71, (3, 2))
  assert config.model_kwargs.width_multiplier == 0.25 and config.optimizer == 'sgd'
  assert rows == [report.Row('xception', REFERENCE_PARAMETER_COUNTS['xception'], 2.0, 16.0, 5.0)]  # Full-size count.
  table = report.format_table(rows, 8, 71, 'float32', options)
  print(table)
  assert '| xception | 22,855,952 | 2 | 16 | 5 |' in table and '8 × cpu' in table.lower()


SPECS = ['configs/ablations.py:xception,quick', 'configs/ablations.py:no_residual,quick',
         'base=configs/imagenet.py']


def test_sweep_plans_named_sibling_workdirs(tmp_path):
  runs = sweep.plan(SPECS, str(tmp_path))
  assert [(r.name, r.workdir) for r in runs] == [
      (name, str(tmp_path / name)) for name in ('xception', 'no_residual', 'base')]
  with pytest.raises(ValueError, match='share the workdir name'):
    sweep.plan(['configs/ablations.py:elu', 'configs/ablations.py:elu,quick'], str(tmp_path))
  with pytest.raises(ValueError, match="Unknown config variant 'no_resdual'"):
    sweep.plan(['configs/ablations.py:no_resdual'], str(tmp_path))


def test_sweep_dry_runs_print_one_command_per_run(tmp_path):
  (tmp_path / 'base').mkdir()
  (tmp_path / 'base' / 'final_metrics.json').write_text('{}')  # Finished: skipped.
  result = subprocess.run([sys.executable, '-m', 'xception_jax.sweep', f'--root={tmp_path}',
                           '--dry_run', *SPECS, '--', '--config.total_steps=3'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[0].startswith('base: finished')
  assert [shlex.split(line)[1:] for line in lines[1:]] == [
      ['-m', 'xception_jax.main', f'--config={SPECS[0]}', f'--workdir={tmp_path}/xception',
       '--config.total_steps=3'],
      ['-m', 'xception_jax.main', f'--config={SPECS[1]}', f'--workdir={tmp_path}/no_residual',
       '--config.total_steps=3']]
  runs = sweep.plan(SPECS[:1], '/shared/runs')
  env, argv = sweep.command(runs[0], 'slurm', ['--config.batch_size=64'])
  assert env == {} and argv == [
      'sbatch', '--job-name=xception',
      f'--export=ALL,CONFIG={SPECS[0]},WORKDIR=/shared/runs/xception',
      os.path.relpath(REPO / 'launch' / 'slurm.sbatch'), '--config.batch_size=64']
  # What that job runs: launch/slurm.sbatch with the exported CONFIG and WORKDIR.
  job = subprocess.run(['bash', 'launch/slurm.sbatch', '--config.batch_size=64'], cwd=REPO,
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, DRY_RUN='1', CONFIG=SPECS[0], VENV=sys.prefix,
                                WORKDIR='/shared/runs/xception'))
  assert shlex.split(job.stdout)[5:8] == [f'--config={SPECS[0]}',
                                          '--workdir=/shared/runs/xception',
                                          '--config.distributed.enabled=True']


def test_sweep_starts_a_tpu_slice_per_run(tmp_path, monkeypatch, capsys):
  # launch/tpu_pod.sh under DRY_RUN=1 prints its gcloud commands: run one per run, as the sweep does.
  monkeypatch.setenv('DRY_RUN', '1')
  monkeypatch.setenv('TPU_NAME', 'pod')
  monkeypatch.setenv('ZONE', 'us-central2-b')
  monkeypatch.chdir(REPO)
  status = sweep.sweep(sweep.plan(SPECS[:2], str(tmp_path)), 'tpu_pod', ['--config.seed=1'])
  assert status == 0
  for name, slice_name in (('xception', 'pod-xception'), ('no_residual', 'pod-no-residual')):
    commands = (tmp_path / f'{name}.launch.log').read_text().splitlines()
    assert [shlex.split(c)[4:6] for c in commands] == [
        ['create', slice_name], ['scp', '--recurse'], ['ssh', slice_name], ['ssh', slice_name]]
    assert f'--workdir={tmp_path}/{name}' in commands[-1]
    assert '--config.seed=1' in commands[-1]
  assert 'pod-no-residual' in capsys.readouterr().out
