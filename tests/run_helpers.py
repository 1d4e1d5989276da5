"""Training runs as separate processes, the way users and clusters start them."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Set for every test process (tests/conftest.py) and the training processes tests start.
# The suite's many tiny programs are compile-bound, so XLA's graph passes run as always but
# the code generation is the cheapest: LLVM does not optimise the machine code, fusions use
# the older emitters, and each program is emitted as one module. A tiny Inception-V3
# gradient compiled in 2.7 s instead of 5.4 (28 s instead of 42 for two tests with the
# first flag alone).
FAST_COMPILE_XLA_FLAGS = ('--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false '
                          '--xla_cpu_parallel_codegen_split_count=1')


def tiny_run_flags(data_root, workdir, **overrides) -> list[str]:
  """main.py flags for a seconds-per-step run of a 0.25-width Xception on an image folder."""
  options = {
      'config': 'configs/quickstart.py', 'workdir': workdir,
      'config.dataset': f'folder:{data_root}', 'config.eval_split': 'test',
      'config.model_kwargs.middle_flow_repeats': 1, 'config.batch_size': 8,
      'config.log_every_steps': 1, 'config.checkpoint_every_steps': 1,
      'config.keep_checkpoints': 100, 'config.total_steps': 6,
  }
  options.update({k.replace('__', '.'): v for k, v in overrides.items()})
  return [f'--{k}={v}' for k, v in options.items()]


def environment(devices: int) -> dict[str, str]:
  env = dict(os.environ, PYTHONUNBUFFERED='1', JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices} {FAST_COMPILE_XLA_FLAGS}'
  return env


def start_main(flags, devices=1, log_path=None) -> subprocess.Popen:
  out = open(log_path, 'w') if log_path else subprocess.PIPE
  return subprocess.Popen([sys.executable, '-m', 'xception_jax.main', *flags], cwd=REPO,
                          env=environment(devices), stdout=out, stderr=subprocess.STDOUT,
                          text=True)


def start_launcher(flags, processes, devices, log_path) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, 'launch/local.py', f'--processes={processes}',
       f'--devices_per_process={devices}', '--', *flags], cwd=REPO, env=environment(devices),
      stdout=open(log_path, 'w'), stderr=subprocess.STDOUT, text=True)


def wait_for_step(log_path, step: int, process: subprocess.Popen, timeout=600) -> float:
  """Blocks until the log reports training step `step`; returns when that was seen."""
  pattern = re.compile(rf'step {step}/\d+ \|')
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if pattern.search(Path(log_path).read_text()):
      return time.monotonic()
    if process.poll() is not None:
      raise AssertionError(f'process ended ({process.returncode}) before step {step}:\n'
                           + Path(log_path).read_text()[-3000:])
    time.sleep(0.1)
  raise AssertionError(f'no step {step} within {timeout} s')


def checkpoint_steps(workdir) -> list[int]:
  """Completed checkpoints on disk (Orbax renames a finished save to its step number)."""
  directory = Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
      if directory.is_dir() else []
