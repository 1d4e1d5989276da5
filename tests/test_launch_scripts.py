"""The cluster launchers that cannot run here: syntax and the commands they would run."""
import os
import shlex
import subprocess
import sys

import pytest

from run_helpers import REPO

from launch import local  # noqa: E402  (the repository root is on sys.path under pytest)


def dry_run(script, *args, **env):
  return subprocess.run(['bash', script, *args], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, DRY_RUN='1', **env), timeout=60)


@pytest.mark.parametrize('script', ['launch/tpu_pod.sh', 'launch/slurm.sbatch'])
def test_scripts_parse(script):
  result = subprocess.run(['bash', '-n', script], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


def test_tpu_pod_dry_run_prints_the_gcloud_commands():
  env = dict(TPU_NAME='pod', ZONE='us-central2-b', ACCELERATOR='v4-32', WORKDIR='/mnt/runs/x')
  result = dry_run('launch/tpu_pod.sh', 'all', '--config.batch_size=4096', **env)
  assert result.returncode == 0, result.stderr
  create, copy, install, train = [shlex.split(line) for line in result.stdout.splitlines()]
  assert create == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'pod',
                    '--accelerator-type=v4-32', '--version=tpu-ubuntu2204-base',
                    '--zone=us-central2-b']
  assert copy[4:7] == ['scp', '--recurse', '--worker=all'] and copy[-2] == 'pod:~/xception_jax'
  assert install[4:7] == ['ssh', 'pod', '--worker=all']
  assert 'pip install -q -r requirements.txt' in install[7]
  assert train[4:7] == ['ssh', 'pod', '--worker=all']
  assert train[7].endswith('.venv/bin/python -m xception_jax.main --config=configs/imagenet.py '
                           '--workdir=/mnt/runs/x --config.distributed.enabled=True '
                           '--config.batch_size=4096')
  delete = dry_run('launch/tpu_pod.sh', 'delete', **env)
  assert shlex.split(delete.stdout) == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'pod',
                                        '--quiet', '--zone=us-central2-b']
  missing = dry_run('launch/tpu_pod.sh', 'run', TPU_NAME='pod', ZONE='z')
  assert missing.returncode != 0 and 'WORKDIR' in missing.stderr


def test_slurm_dry_run_prints_the_srun_command():
  result = dry_run('launch/slurm.sbatch', '--config.batch_size=2048', WORKDIR='/shared/r')
  assert result.returncode == 0, result.stderr
  assert shlex.split(result.stdout) == [
      'srun', '--kill-on-bad-exit=1', '.venv/bin/python', '-m', 'xception_jax.main',
      '--config=configs/imagenet.py', '--workdir=/shared/r', '--config.distributed.enabled=True',
      '--config.batch_size=2048']
  text = (REPO / 'launch/slurm.sbatch').read_text()
  assert '#SBATCH --signal=TERM@' in text and '#SBATCH --requeue' in text


def test_local_launcher_commands_and_environment():
  command = local.process_command(['--config=c.py'], 1, 2, 1234)
  assert command[:3] == [sys.executable, '-m', 'xception_jax.main']
  assert command[3:] == ['--config=c.py', '--config.distributed.enabled=True',
                         '--config.distributed.coordinator_address=127.0.0.1:1234',
                         '--config.distributed.num_processes=2',
                         '--config.distributed.process_id=1']
  env = local.process_environment(1, 'cpu', 3)
  assert env['XLA_FLAGS'].split()[-1] == '--xla_force_host_platform_device_count=3'
  assert env['XLA_FLAGS'].count('device_count') == 1
  assert local.process_environment(1, 'gpu', 1)['CUDA_VISIBLE_DEVICES'] == '1'
