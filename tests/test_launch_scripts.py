"""The cluster launchers that cannot run here: syntax and the commands they would run."""
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from run_helpers import REPO

from launch import local  # noqa: E402  (the repository root is on sys.path under pytest)


def dry_run(script, *args, **env):
  return subprocess.run(['bash', script, *args], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, DRY_RUN='1', **env), timeout=60)


@pytest.mark.parametrize('script', ['launch/tpu_pod.sh', 'launch/slurm.sbatch',
                                    'launch/install.sh'])
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
  assert install[7] == '--command=cd ~/xception_jax && bash launch/install.sh tpu'
  assert train[4:7] == ['ssh', 'pod', '--worker=all']
  assert train[7].endswith('.venv/bin/python -m xception_jax.main --config=configs/imagenet.py '
                           '--workdir=/mnt/runs/x --config.distributed.enabled=True '
                           '--config.batch_size=4096')
  delete = dry_run('launch/tpu_pod.sh', 'delete', **env)
  assert shlex.split(delete.stdout) == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'pod',
                                        '--quiet', '--zone=us-central2-b']
  missing = dry_run('launch/tpu_pod.sh', 'run', TPU_NAME='pod', ZONE='z')
  assert missing.returncode != 0 and 'WORKDIR' in missing.stderr


@pytest.mark.parametrize('accelerator, version', [
    ('v6e-8', 'v2-alpha-tpuv6e'), ('v5p-16', 'v2-alpha-tpuv5'),
    ('v5litepod-16', 'v2-alpha-tpuv5-lite'), ('v4-32', 'tpu-ubuntu2204-base'),
    ('v3-8', 'tpu-ubuntu2204-base')])
def test_the_tpu_software_version_follows_the_accelerator(accelerator, version):
  env = dict(TPU_NAME='pod', ZONE='z', ACCELERATOR=accelerator)
  create = shlex.split(dry_run('launch/tpu_pod.sh', 'create', **env).stdout)
  assert create[5:8] == ['pod', f'--accelerator-type={accelerator}', f'--version={version}']
  override = dry_run('launch/tpu_pod.sh', 'create', RUNTIME_VERSION='v2-custom', **env)
  assert '--version=v2-custom' in shlex.split(override.stdout)


@pytest.mark.parametrize('accelerator', ['tpu7x-16', 'v7x-8', 'v5e-8', 'a100'])
def test_an_unknown_accelerator_family_is_refused(accelerator):
  result = dry_run('launch/tpu_pod.sh', 'all', TPU_NAME='pod', ZONE='z', ACCELERATOR=accelerator,
                   WORKDIR='/w')
  assert result.returncode == 2 and result.stdout == ''
  assert result.stderr.strip() == (
      f"error: unknown TPU accelerator type '{accelerator}'; this launcher knows v2, v3, v4, "
      'v5litepod (v5e), v5p and v6e (e.g. v4-32, v5litepod-16, v6e-8); for TPU7x and later '
      'use GKE (launch/gke/jobset.yaml)')


def test_a_queued_resource_is_created_awaited_and_deleted():
  env = dict(TPU_NAME='pod', ZONE='z', ACCELERATOR='v6e-16', QUEUED='1', SPOT='1')
  create, wait = map(shlex.split, dry_run('launch/tpu_pod.sh', 'create', **env).stdout.splitlines())
  assert create == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'pod',
                    '--node-id=pod', '--accelerator-type=v6e-16',
                    '--runtime-version=v2-alpha-tpuv6e', '--spot', '--zone=z']
  assert wait[4:6] == ['describe', 'pod'] and '--format=value(state.state)' in wait
  delete = shlex.split(dry_run('launch/tpu_pod.sh', 'delete', **env).stdout)
  assert delete == ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', 'pod', '--force',
                    '--quiet', '--zone=z']


def path_with(directory, **programs):
  """A PATH of one directory holding links to bash, dirname and python3 (and `programs`)."""
  directory.mkdir()
  for name in ('bash', 'dirname'):
    (directory / name).symlink_to(shutil.which(name))
  (directory / 'python3').symlink_to(sys.executable)
  for name, target in programs.items():
    (directory / name).symlink_to(target)
  return str(directory)


def test_install_builds_the_platforms_environment_with_uv_and_checks_it(tmp_path):
  venv = tmp_path / 'venv'
  steps = lambda uv: [
      [uv, 'venv', '--allow-existing', '--python', '3.12', str(venv)],
      [uv, 'pip', 'install', '--python', f'{venv}/bin/python', '-e', '.[train,convert,tpu]'],
      [f'{venv}/bin/python', 'launch/check_platform.py', 'tpu']]
  no_uv = dry_run('launch/install.sh', 'tpu', str(venv), PATH=path_with(tmp_path / 'a'))
  assert no_uv.returncode == 0, no_uv.stderr
  lines = [shlex.split(line) for line in no_uv.stdout.splitlines()]
  assert lines[0] == ['python3', '-m', 'pip', 'install', '--user', '--quiet', 'uv>=0.5,<1']
  assert lines[1][0].endswith('/bin/uv') and lines[1:] == steps(lines[1][0])  # pip --user's.
  with_uv = dry_run('launch/install.sh', 'tpu', str(venv),
                    PATH=path_with(tmp_path / 'b', uv='/bin/true'))
  assert [shlex.split(line) for line in with_uv.stdout.splitlines()] == steps(
      str(tmp_path / 'b' / 'uv'))
  unknown = dry_run('launch/install.sh', 'rocm')
  assert unknown.returncode == 2
  assert unknown.stderr.strip() == ("error: unknown platform 'rocm'; usage: launch/install.sh "
                                    'cpu|cuda12|tpu [VENV]')


def test_every_platform_extra_pins_the_jax_of_requirements():
  import tomllib
  extras = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['optional-dependencies']
  requirements = (REPO / 'requirements.txt').read_text().splitlines()
  cpu_pin = next(line for line in requirements if line.startswith('jax[cpu]'))
  onednn = [line for line in requirements if line.startswith('onednn-')]
  assert extras['cpu'] == [cpu_pin, *onednn] and len(onednn) == 2   # CPU hosts: oneDNN's convs.
  assert extras['cuda12'] == [cpu_pin.replace('[cpu]', '[cuda12]')]
  assert extras['tpu'] == [cpu_pin.replace('[cpu]', '[tpu]')]


def test_the_platform_check_passes_here_on_cpu_and_names_a_missing_tpu():
  check = lambda platform: subprocess.run([sys.executable, 'launch/check_platform.py', platform],
                                          cwd=REPO, capture_output=True, text=True, timeout=120,
                                          env=dict(os.environ, JAX_PLATFORMS=''))
  cpu, tpu = check('cpu'), check('tpu')
  assert cpu.returncode == 0 and cpu.stdout.startswith('ok: jax ') and ' cpu device(s)' in cpu.stdout
  assert tpu.returncode == 1 and tpu.stderr.startswith('error: expected tpu devices for tpu, jax ')
  assert ' sees ' in tpu.stderr and ' cpu device(s) ' in tpu.stderr


def test_slurm_builds_the_environment_once_then_prints_the_srun_command(tmp_path):
  venv = tmp_path / 'venv'
  fresh = dry_run('launch/slurm.sbatch', '--config.batch_size=2048', WORKDIR='/shared/r',
                  VENV=str(venv))
  assert fresh.returncode == 0, fresh.stderr
  install, srun = map(shlex.split, fresh.stdout.splitlines())
  assert install == ['bash', 'launch/install.sh', 'cuda12', str(venv)]
  assert srun == [
      'srun', '--kill-on-bad-exit=1', f'{venv}/bin/python', '-m', 'xception_jax.main',
      '--config=configs/imagenet.py', '--workdir=/shared/r', '--config.distributed.enabled=True',
      '--config.batch_size=2048']
  (venv / 'bin').mkdir(parents=True)
  (venv / 'bin' / 'python').symlink_to(sys.executable)
  again = dry_run('launch/slurm.sbatch', WORKDIR='/shared/r', VENV=str(venv))
  assert shlex.split(again.stdout)[0] == 'srun'  # Built: reused.
  text = (REPO / 'launch/slurm.sbatch').read_text()
  assert '#SBATCH --signal=TERM@' in text and '#SBATCH --requeue' in text


def test_the_gke_jobset_runs_one_process_per_host_of_a_tpu_slice():
  import yaml
  jobset = yaml.safe_load((REPO / 'launch/gke/jobset.yaml').read_text())
  assert jobset['kind'] == 'JobSet'
  assert jobset['metadata']['annotations'] == {
      'alpha.jobset.sigs.k8s.io/exclusive-topology': 'cloud.google.com/gke-nodepool'}
  job = jobset['spec']['replicatedJobs'][0]['template']['spec']
  assert job['parallelism'] == job['completions'] == 4  # A 4x4 v5e slice: 4 hosts.
  pod = job['template']['spec']
  assert pod['nodeSelector'] == {'cloud.google.com/gke-tpu-accelerator': 'tpu-v5-lite-podslice',
                                 'cloud.google.com/gke-tpu-topology': '4x4'}
  assert pod['terminationGracePeriodSeconds'] >= 180  # As SLURM's TERM@180.
  container = pod['containers'][0]
  assert container['resources']['limits'] == {'google.com/tpu': 4}
  command = container['args'][0]
  assert 'bash launch/install.sh tpu /tmp/venv' in command
  assert command.endswith('--config.distributed.enabled=True')
  assert '--workdir=/bucket/runs/' in command  # On the shared bucket mount.
  assert pod['volumes'][0]['csi']['driver'] == 'gcsfuse.csi.storage.gke.io'


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
