"""The main job asks glibc's malloc for huge pages where the machine allows it, and only there."""
import os
import subprocess
import sys

import pytest

from xception_jax.trainer import host_memory

ON = 'glibc.malloc.hugetlb=1'


ADDED = {'XCEPTION_JAX_ADDED_TUNABLE': ON}
GPU = ['/dev/nvidia0']


@pytest.mark.parametrize('environ, libc, mode, devices, argv, tunables, reason', [
    ({}, (2, 36), 'madvise', [], [], ON, 'on: glibc.malloc.hugetlb=1 to be added by xception_jax'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, (2, 35), 'madvise', [], [],
     'glibc.malloc.arena_max=2:' + ON, 'on: '),
    ({'JAX_PLATFORMS': 'cpu'}, (2, 36), 'madvise', GPU, [], ON, 'on: '),   # CPU asked for.
    # Yours, and ours after the re-execution, told apart.
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, (2, 36), 'madvise', [], [], None,
     'as you set them: GLIBC_TUNABLES=glibc.malloc.hugetlb=0'),
    ({'GLIBC_TUNABLES': ON}, (2, 36), 'madvise', [], [], None, 'as you set them: '),
    ({'GLIBC_TUNABLES': ON, **ADDED}, (2, 36), 'madvise', [], [], None,
     'on: glibc.malloc.hugetlb=1 added by xception_jax'),
    # Where it cannot help.
    ({'XCEPTION_JAX_HUGE_PAGES': '0'}, (2, 36), 'madvise', [], [], None,
     'off: XCEPTION_JAX_HUGE_PAGES=0'),
    ({}, (2, 36), 'madvise', [], ['--config=x.py', '--helpfull'], None, 'off: help only'),
    ({}, (2, 36), 'madvise', GPU, [], None, 'off: accelerator host (/dev/nvidia0'),
    ({'JAX_PLATFORMS': 'tpu'}, (2, 36), 'madvise', [], [], None, 'off: JAX_PLATFORMS=tpu'),
    ({'JAX_PLATFORMS': 'cuda,cpu'}, (2, 36), 'madvise', [], [], None, 'off: JAX_PLATFORMS='),
    ({}, (2, 34), 'madvise', [], [], None, 'off: needs glibc 2.35'),
    ({}, None, 'madvise', [], [], None, 'off: needs glibc 2.35'),
    ({}, (2, 36), 'always', [], [], None, 'left to the kernel: transparent huge pages always'),
    ({}, (2, 36), 'never', [], [], None, 'left to the kernel: transparent huge pages never'),
    ({}, (2, 36), None, [], [], None, 'left to the kernel: transparent huge pages unknown'),
])
def test_environment_adds_the_tunable_only_where_it_helps(environ, libc, mode, devices, argv,
                                                           tunables, reason):
  env, why = host_memory.huge_page_environment({'PATH': '/bin', **environ}, libc, mode,
                                               devices, argv)
  assert why.startswith(reason), why
  if tunables is None:
    assert env is None
  else:
    assert env == {'PATH': '/bin', **environ, 'GLIBC_TUNABLES': tunables, **ADDED}


def test_accelerator_device_files_are_found_by_pattern(tmp_path):
  for name in ('nvidia0', 'nvidiactl', 'accel3'):
    (tmp_path / name).touch()
  patterns = [str(tmp_path / 'nvidia[0-9]*'), str(tmp_path / 'accel[0-9]*')]
  assert host_memory.accelerator_devices(patterns) == [str(tmp_path / 'accel3'),
                                                        str(tmp_path / 'nvidia0')]
  assert host_memory.accelerator_devices([str(tmp_path / 'vfio' / '[0-9]*')]) == []


@pytest.mark.parametrize('text, mode', [
    ('always [madvise] never\n', 'madvise'), ('[always] madvise never\n', 'always'),
    ('always madvise [never]\n', 'never'), ('garbled\n', None)])
def test_thp_mode_reads_the_bracketed_choice(tmp_path, text, mode):
  path = tmp_path / 'enabled'
  path.write_text(text)
  assert host_memory.thp_mode(str(path)) == mode
  assert host_memory.thp_mode(str(tmp_path / 'missing')) is None


def test_glibc_version_is_read_from_the_running_c_library():
  version = host_memory.glibc_version()
  if os.confstr('CS_GNU_LIBC_VERSION').startswith('glibc '):
    assert version is not None and version >= (2, 17)
  else:
    assert version is None


def test_the_main_job_logs_its_huge_pages_and_reports_bad_input_in_one_line(tmp_path):
  environ = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  expected, why = host_memory.huge_page_environment(
      environ, host_memory.glibc_version(), host_memory.thp_mode(),
      host_memory.accelerator_devices())
  # A model option the file does not declare reaches the model's check, whose error ends
  # the job right after its start-up log.
  result = subprocess.run(
      [sys.executable, '-m', 'xception_jax.main', '--config=configs/quickstart.py',
       f'--workdir={tmp_path}', '--config.model_kwargs.fc_layer=(8,)',
       f'--config.data_dir={tmp_path}'],
      capture_output=True, text=True, timeout=300, env=environ)
  assert result.returncode == 1, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: xception has no option fc_layer (did you mean fc_layers?); its options: ')
  assert not list(tmp_path.iterdir())  # Checked before anything was written.
  line = next(l for l in result.stderr.splitlines() if 'malloc huge pages:' in l)
  if expected is None:
    assert line.endswith(why)
  else:   # The re-executed process found the tunable its first start added, and says so.
    assert line.endswith(f'on: {ON} added by xception_jax '
                         f'(GLIBC_TUNABLES={expected["GLIBC_TUNABLES"]})')


def test_reexecution_keeps_the_command_line_and_survives_a_failed_exec(monkeypatch):
  calls = []

  def fake_execve(path, argv, env):
    calls.append((path, argv, env['GLIBC_TUNABLES']))
    raise OSError('exec refused')

  monkeypatch.setattr(host_memory, 'glibc_version', lambda: (2, 36))
  monkeypatch.setattr(host_memory, 'thp_mode', lambda: 'madvise')
  monkeypatch.setattr(host_memory, 'accelerator_devices', lambda: [])
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  monkeypatch.setattr(host_memory.os, 'execve', fake_execve)
  monkeypatch.setattr(host_memory.sys, 'orig_argv', ['python3', '-m', 'xception_jax.main', '--x=1'])
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  host_memory.reexec_with_huge_pages()   # Returns: the job runs as is.
  assert calls == [(sys.executable, [sys.executable, '-m', 'xception_jax.main', '--x=1'], ON)]
  monkeypatch.setenv('GLIBC_TUNABLES', ON)
  host_memory.reexec_with_huge_pages()   # The second start finds the tunable: no exec.
  monkeypatch.delenv('GLIBC_TUNABLES')
  monkeypatch.setattr(host_memory.sys, 'argv', ['main.py', '--help'])
  host_memory.reexec_with_huge_pages()   # Help only: no exec either.
  assert len(calls) == 1
