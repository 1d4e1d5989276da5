"""The main job keeps glibc's heap on huge pages, or runs tcmalloc if asked, where it helps."""
import json
import os
import subprocess
import sys

import pytest

from xception_jax.trainer import host_memory

ON = 'glibc.malloc.hugetlb=1'
KEEP = 'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1125899906842624'
DEFAULT = f'{KEEP}:{ON}'
MARK = 'XCEPTION_JAX_ADDED_MALLOC'
TC = 'libtcmalloc_minimal.so.4'
QUIET = {'TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD': str(1 << 50)}
KEPT = {'GLIBC_TUNABLES': DEFAULT, MARK: DEFAULT}
KEPT_ONLY = {'GLIBC_TUNABLES': KEEP, MARK: KEEP}   # Without huge pages.
HUGE = {'GLIBC_TUNABLES': ON, MARK: ON}
TCMALLOC = {'LD_PRELOAD': TC, **QUIET, MARK: TC}
GPU = ['/dev/nvidia0']
GOOD = ((2, 36), 'madvise')   # glibc and kernel that allow huge pages
KERNEL = 'left to the kernel: transparent huge pages'
ASK = {'XCEPTION_JAX_MALLOC': 'tcmalloc'}
PAGES = {'XCEPTION_JAX_MALLOC': 'huge-pages'}


@pytest.mark.parametrize('environ, host, devices, argv, tcmalloc, added, reason', [
    # The kept heap with huge pages, unless another choice is asked for.
    ({}, GOOD, [], [], TC, KEPT, f'on: {DEFAULT} to be added by xception_jax'),
    (PAGES, GOOD, [], [], TC, {**PAGES, **HUGE}, f'on: {ON} to be added by xception_jax'),
    (ASK, GOOD, [], [], TC, {**ASK, **TCMALLOC}, f'on: {TC} to be added by xception_jax'),
    ({**ASK, 'LD_PRELOAD': 'libprofiler.so'}, GOOD, [], [], TC,
     {**ASK, **TCMALLOC, 'LD_PRELOAD': f'libprofiler.so {TC}'}, 'on: '),
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, ((2, 35), 'madvise'), [], [], None,
     {**KEPT, 'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:' + DEFAULT}, 'on: '),
    ({'JAX_PLATFORMS': 'cpu'}, GOOD, GPU, [], None, KEPT, 'on: '),   # CPU asked for.
    # The kept heap without huge pages where glibc or the kernel will not give them.
    ({}, ((2, 34), 'madvise'), [], [], None, KEPT_ONLY, f'on: {KEEP} to be added'),
    ({}, ((2, 36), 'always'), [], [], None, KEPT_ONLY, 'on: '),
    ({}, ((2, 36), 'never'), [], [], None, KEPT_ONLY, 'on: '),
    # Yours, and ours after the re-execution, told apart.
    ({**ASK, 'LD_PRELOAD': 'libjemalloc.so.2'}, GOOD, [], [], TC, None,
     'as you set it: LD_PRELOAD=libjemalloc.so.2'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, GOOD, [], [], None, None,
     'as you set them: GLIBC_TUNABLES=glibc.malloc.hugetlb=0'),
    ({'GLIBC_TUNABLES': 'glibc.malloc.mmap_max=65536'}, GOOD, [], [], None, None,
     'as you set them: GLIBC_TUNABLES=glibc.malloc.mmap_max=65536'),
    ({**ASK, **TCMALLOC}, GOOD, [], [], TC, None, f'on: {TC} added by xception_jax'),
    (HUGE, GOOD, [], [], None, None, f'on: {ON} added by xception_jax'),
    (KEPT, GOOD, [], [], None, None,
     f'on: {DEFAULT} added by xception_jax, computations on the calling thread'),
    ({**KEPT, 'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:' + DEFAULT}, GOOD, [], [], None,
     None, f'on: {DEFAULT} added by xception_jax, computations on the calling thread'),
    # Where it cannot help, or is not wanted.
    ({'XCEPTION_JAX_MALLOC': 'system'}, GOOD, [], [], None, None,
     'off: XCEPTION_JAX_MALLOC=system'),
    (ASK, GOOD, [], ['--config=x.py', '--helpfull'], None, None, 'off: help only'),
    (ASK, GOOD, GPU, [], TC, None, 'off: accelerator host (/dev/nvidia0'),
    ({'JAX_PLATFORMS': 'tpu'}, GOOD, [], [], None, None, 'off: JAX_PLATFORMS=tpu'),
    ({'JAX_PLATFORMS': 'cuda,cpu'}, GOOD, [], [], None, None, 'off: JAX_PLATFORMS='),
    ({}, ((2, 25), 'madvise'), [], [], None, None, 'off: glibc 2.26 or later needed'),
    ({}, (None, 'madvise'), [], [], None, None, 'off: glibc 2.26 or later needed'),
    (PAGES, ((2, 34), 'madvise'), [], [], None, None, 'off: huge pages need glibc 2.35'),
    (PAGES, ((2, 36), 'always'), [], [], None, None, f'{KERNEL} always'),
    (PAGES, ((2, 36), 'never'), [], [], None, None, f'{KERNEL} never'),
    (PAGES, ((2, 36), None), [], [], None, None, f'{KERNEL} unknown'),
])
def test_environment_adds_an_allocator_only_where_it_helps(environ, host, devices, argv, tcmalloc,
                                                           added, reason):
  env, why = host_memory.allocator_environment({'PATH': '/bin', **environ}, *host, devices, argv,
                                               tcmalloc)
  assert why.startswith(reason), why
  if reason.endswith((' added by xception_jax', 'calling thread')):   # Whole lines.
    assert why == reason
  if added is None:
    assert env is None
  else:
    assert env == {'PATH': '/bin', **environ, **added}


@pytest.mark.parametrize('environ, tcmalloc, message', [
    ({'XCEPTION_JAX_MALLOC': 'jemalloc'}, TC,
     "XCEPTION_JAX_MALLOC='jemalloc': use one of auto, tcmalloc, huge-pages, system."),
    ({'XCEPTION_JAX_MALLOC': 'tcmalloc'}, None,
     'XCEPTION_JAX_MALLOC=tcmalloc but no tcmalloc library is installed: apt install'),
])
def test_a_bad_allocator_choice_is_refused(environ, tcmalloc, message):
  with pytest.raises(ValueError) as error:
    host_memory.allocator_environment(environ, *GOOD, [], [], tcmalloc)
  assert str(error.value).startswith(message)


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


def clean_environment() -> dict[str, str]:
  """This process's environment without any allocator setting of its own."""
  return {k: v for k, v in os.environ.items()
          if k not in ('GLIBC_TUNABLES', 'LD_PRELOAD', host_memory.SWITCH, host_memory.ADDED_MARK)}


def test_the_main_job_logs_its_allocator_and_reports_bad_input_in_one_line(tmp_path):
  environ = clean_environment()
  expected, why = host_memory.allocator_environment(
      environ, host_memory.glibc_version(), host_memory.thp_mode(),
      host_memory.accelerator_devices(), tcmalloc=host_memory.find_tcmalloc())
  # A model option the file does not declare reaches the model's check, whose error ends
  # the job right after its start-up log.
  command = [sys.executable, '-m', 'xception_jax.main', '--config=configs/quickstart.py',
             f'--workdir={tmp_path}', '--config.model_kwargs.fc_layer=(8,)',
             f'--config.data_dir={tmp_path}']
  result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environ)
  assert result.returncode == 1, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      'error: xception has no option fc_layer (did you mean fc_layers?); its options: ')
  assert not list(tmp_path.iterdir())  # Checked before anything was written.
  assert 'cannot be preloaded' not in result.stderr   # The loader found what was added.
  line = next(l for l in result.stderr.splitlines() if 'host malloc:' in l)
  if expected is None:
    assert line.endswith(why)
  else:   # The re-executed process found the setting its first start added, and says so.
    mark = expected[host_memory.ADDED_MARK]
    inline = ', computations on the calling thread' if KEEP in mark else ''
    assert line.endswith(f'on: {mark} added by xception_jax{inline}')

  result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**environ, host_memory.SWITCH: 'fast'})
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      "error: XCEPTION_JAX_MALLOC='fast': use one of auto, tcmalloc, huge-pages, system."]


def test_the_added_tcmalloc_is_the_allocator_of_the_started_process():
  name = host_memory.find_tcmalloc()
  if name is None:
    pytest.skip('tcmalloc is not installed here (apt install libtcmalloc-minimal4)')
  environ, _ = host_memory.allocator_environment({**clean_environment(), **ASK}, None, None,
                                                 tcmalloc=name)
  # malloc's own symbol, as the started process resolves it, lies in the preloaded library.
  probe = ('import ctypes, ctypes.util;'
           'libc = ctypes.CDLL(None); info = (ctypes.c_void_p * 4)();'
           'dladdr = libc.dladdr; dladdr.argtypes = [ctypes.c_void_p, ctypes.c_void_p];'
           'dladdr(ctypes.cast(libc.malloc, ctypes.c_void_p), info);'
           'print(ctypes.string_at(info[0]).decode())')
  result = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                          env=environ, timeout=60)
  assert result.returncode == 0, result.stderr
  assert 'tcmalloc' in result.stdout, result.stdout
  result = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                          env=clean_environment(), timeout=60)
  assert 'tcmalloc' not in result.stdout and 'libc' in result.stdout, result.stdout


def test_reexecution_keeps_the_command_line_and_survives_a_failed_exec(monkeypatch):
  calls = []

  def fake_execve(path, argv, env):
    calls.append((path, argv, env['LD_PRELOAD']))
    raise OSError('exec refused')

  monkeypatch.setattr(host_memory, 'find_tcmalloc', lambda: TC)
  monkeypatch.setattr(host_memory, 'accelerator_devices', lambda: [])
  for name in ('JAX_PLATFORMS', 'LD_PRELOAD', 'GLIBC_TUNABLES'):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv(host_memory.SWITCH, 'tcmalloc')
  monkeypatch.setattr(host_memory.os, 'execve', fake_execve)
  monkeypatch.setattr(host_memory.sys, 'orig_argv', ['python3', '-m', 'xception_jax.main', '--x=1'])
  host_memory.reexec_with_allocator()   # Returns: the job runs as is.
  assert calls == [(sys.executable, [sys.executable, '-m', 'xception_jax.main', '--x=1'], TC)]
  monkeypatch.setenv('LD_PRELOAD', TC)
  monkeypatch.setenv(host_memory.ADDED_MARK, TC)
  host_memory.reexec_with_allocator()   # The second start finds the library: no exec.
  monkeypatch.delenv('LD_PRELOAD')
  monkeypatch.setattr(host_memory.sys, 'argv', ['main.py', '--help'])
  host_memory.reexec_with_allocator()   # Help only: no exec either.
  assert len(calls) == 1
  monkeypatch.setattr(host_memory.sys, 'argv', ['main.py'])
  monkeypatch.setattr(host_memory, 'find_tcmalloc', lambda: None)
  with pytest.raises(SystemExit, match='^error: XCEPTION_JAX_MALLOC=tcmalloc but no tcmalloc'):
    host_memory.reexec_with_allocator()


# Runs one computation with 128 MiB of XLA temporary memory (tanh(x), read by a matrix product and
# by a reversal) eight times and prints the minor page faults of the last six calls (the first
# ones take their memory from the kernel).
TEMPORARY_MEMORY_PROBE = '''
import json, resource
from xception_jax.trainer import host_memory
inline = host_memory.configure_jax()
import jax, jax.numpy as jnp
f = jax.jit(lambda x, w: (jnp.tanh(x) @ w).sum() + jnp.tanh(x)[::-1, ::-1].max())
x, w = jnp.ones((4096, 4096), jnp.float32), jnp.ones((4096, 8), jnp.float32)
faults = []
for _ in range(8):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x, w).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
temp = f.lower(x, w).compile().memory_analysis().temp_size_in_bytes
print(json.dumps({'inline': inline, 'faults': faults[2:], 'temp_mib': temp / 2**20}))
'''


def run_probe(choice: str) -> dict:
  environ, _ = host_memory.allocator_environment(
      {**clean_environment(), host_memory.SWITCH: choice}, host_memory.glibc_version(),
      host_memory.thp_mode())
  if environ is None:
    pytest.skip(f'{choice}: nothing added on this host ({host_memory.glibc_version()}, '
                f'{host_memory.thp_mode()})')
  result = subprocess.run([sys.executable, '-c', TEMPORARY_MEMORY_PROBE], capture_output=True,
                          text=True, env=environ, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.splitlines()[-1])


def test_the_kept_heap_reuses_a_computations_temporary_memory():
  kept = run_probe('auto')
  assert kept['inline'] and kept['temp_mib'] >= 128
  assert min(kept['faults']) <= 8, kept   # Its memory comes back from the heap.
  # Huge pages alone: the kernel maps it afresh every call, at least one fault a 2 MiB page.
  returned = run_probe('huge-pages')
  assert not returned['inline']
  assert min(returned['faults']) >= returned['temp_mib'] / 2, returned
