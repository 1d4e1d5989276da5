"""The memory allocator of a CPU training job: glibc keeping its heap, or tcmalloc if asked.

On a CPU backend XLA takes each step's temporary memory (the activations,
GiBs a step) from malloc and gives it back at the end of the step. glibc's
malloc maps a block that large from the kernel and unmaps it when freed, so
every step the kernel faults in and clears that memory afresh (at batch 32,
an eighth of Inception-ResNet-v2's CPU time). The main job's default keeps it
instead: glibc takes every block from its main heap (`glibc.malloc.mmap_max=0`)
and never hands the heap's top back (`glibc.malloc.trim_threshold`), asks for
transparent huge pages (`glibc.malloc.hugetlb=1`), and XLA runs each
computation on the calling thread (`jax_cpu_enable_async_dispatch=False`,
`configure_jax`): only the main thread allocates from the main heap, XLA's
worker threads from arenas of at most 64 MiB, where glibc maps a larger block
afresh whatever the settings. A step then reuses the memory the previous one
freed (steps up to 1.2x faster), and as the next step is dispatched only once
the previous one has returned, its memory is freed before the next one takes
it: the peak is one step's, as before. The resident memory stays at that peak
for the whole run. What each choice gains and how it was measured:
docs/performance.md.

The allocator is chosen when a process starts, so `python -m xception_jax.main`
re-executes itself once, first thing, with `GLIBC_TUNABLES` or `LD_PRELOAD`
(tcmalloc) added, and only where that can help:

- not on a host with a GPU or TPU (the activations live on the device), nor
  when `JAX_PLATFORMS` names another platform than the CPU;
- not for `--help` and its kin, which never reach the training;
- not when you chose yourself: `LD_PRELOAD` naming an allocator, or
  `GLIBC_TUNABLES` setting any of the tunables above (yours are kept);
- not where glibc is older than 2.26 (no tunables) or is not the C library;
  huge pages not where glibc is older than 2.35, nor where the kernel's
  transparent huge pages are 'always' (given unasked) or 'never' (refused).

`XCEPTION_JAX_MALLOC` picks: `auto` (the default, above), `huge-pages` (huge
pages only: memory handed back after every step, as glibc does), `tcmalloc`
(an error if it is not installed; it keeps freed memory itself, but with
steps dispatched ahead it can hold two steps' activations), or `system` (run
as is).

This module imports nothing beyond the standard library: it runs before JAX.
"""
from __future__ import annotations

import ctypes.util
import glob
import os
import sys
from typing import Mapping, Optional, Sequence

TUNABLE = 'glibc.malloc.hugetlb'
HUGE_PAGES = f'{TUNABLE}=1'
# glibc's main heap kept whole: no block mapped on its own, the heap's top never handed back.
KEPT_HEAP = ('glibc.malloc.mmap_max=0', f'glibc.malloc.trim_threshold={1 << 50}')
# Tunables that, set by you, leave the choice to you.
YOUR_TUNABLES = (TUNABLE, 'glibc.malloc.mmap_max', 'glibc.malloc.trim_threshold',
                 'glibc.malloc.mmap_threshold')
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'
SWITCH = 'XCEPTION_JAX_MALLOC'
CHOICES = ('auto', 'tcmalloc', 'huge-pages', 'system')
# gperftools' tcmalloc, its minimal build first (Debian/Ubuntu: libtcmalloc-minimal4).
TCMALLOC_LIBRARIES = ('tcmalloc_minimal', 'tcmalloc')
INSTALL_TCMALLOC = 'apt install libtcmalloc-minimal4, or your system\'s gperftools package'
# Allocators a user may have preloaded; theirs is kept.
ALLOCATOR_NAMES = ('tcmalloc', 'jemalloc', 'mimalloc')
# tcmalloc reports every allocation above 1 GiB on stderr; a step's activations often are.
QUIET_TCMALLOC = {'TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD': str(1 << 50)}
# Set by the re-execution, so that the second start can say who chose the allocator.
ADDED_MARK = 'XCEPTION_JAX_ADDED_MALLOC'
# Device files of accelerators JAX would use: NVIDIA GPUs; TPUs (accel: v4 and
# older, vfio: v5 and newer).
ACCELERATOR_DEVICES = ('/dev/nvidia[0-9]*', '/dev/accel[0-9]*', '/dev/vfio/[0-9]*')
HELP_FLAGS = ('-h', '-?', '--help', '--helpshort', '--helpfull', '--helpxml')


def glibc_version() -> Optional[tuple[int, int]]:
  """(major, minor) of the running glibc; None for another C library."""
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
  except (AttributeError, ValueError, OSError):
    return None
  major, minor = version.split('.')[:2]
  return (int(major), int(minor)) if name == 'glibc' else None


def thp_mode(path: str = THP_MODE_FILE) -> Optional[str]:
  """The kernel's transparent huge page mode ('always', 'madvise', 'never'); None if unknown."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def accelerator_devices(patterns: Sequence[str] = ACCELERATOR_DEVICES) -> list[str]:
  """Accelerator device files present on this host (none on a CPU-only machine)."""
  return sorted(path for pattern in patterns for path in glob.glob(pattern))


def find_tcmalloc(names: Sequence[str] = TCMALLOC_LIBRARIES) -> Optional[str]:
  """The name under which the dynamic loader finds tcmalloc (its soname); None if not installed."""
  for name in names:
    found = ctypes.util.find_library(name)
    if found:
      return found
  return None


def allocator_environment(environ: Mapping[str, str], libc: Optional[tuple[int, int]],
                          mode: Optional[str], accelerators: Sequence[str] = (),
                          argv: Sequence[str] = (), tcmalloc: Optional[str] = None,
                          ) -> tuple[Optional[dict[str, str]], str]:
  """(the environment to re-execute with, or None to run as is; why, in a few words).

  Raises ValueError for an unknown `XCEPTION_JAX_MALLOC`, or `tcmalloc` asked
  for where `tcmalloc` (the library's name, as `find_tcmalloc` gives it) is None.
  `tcmalloc` is only read when asked for.
  """
  choice = environ.get(SWITCH, 'auto')
  if choice not in CHOICES:
    raise ValueError(f'{SWITCH}={choice!r}: use one of {", ".join(CHOICES)}.')
  preload, tunables = environ.get('LD_PRELOAD', ''), environ.get('GLIBC_TUNABLES', '')
  added = environ.get(ADDED_MARK)
  if added and (set(added.split()) <= set(preload.split()) or
                set(added.split(':')) <= set(tunables.split(':'))):
    inline = ', computations on the calling thread' if keeps_heap(environ) else ''
    return None, f'on: {added} added by xception_jax{inline}'
  if any(name in preload for name in ALLOCATOR_NAMES):
    return None, f'as you set it: LD_PRELOAD={preload}'
  if any(name in tunables for name in YOUR_TUNABLES):
    return None, f'as you set them: GLIBC_TUNABLES={tunables}'
  if choice == 'system':
    return None, f'off: {SWITCH}=system'
  if any(arg in HELP_FLAGS for arg in argv):
    return None, 'off: help only'
  platforms = [p.strip() for p in environ.get('JAX_PLATFORMS', '').split(',') if p.strip()]
  if platforms and platforms[0] != 'cpu':
    return None, f'off: JAX_PLATFORMS={environ["JAX_PLATFORMS"]} (activations on the device)'
  if not platforms and accelerators:
    return None, f'off: accelerator host ({accelerators[0]}; activations on the device)'
  if choice == 'tcmalloc':
    if not tcmalloc:
      raise ValueError(f'{SWITCH}=tcmalloc but no tcmalloc library is installed: '
                       f'{INSTALL_TCMALLOC}, or leave {SWITCH} unset.')
    return ({**environ, 'LD_PRELOAD': ' '.join(filter(None, [preload, tcmalloc])),
             **QUIET_TCMALLOC, ADDED_MARK: tcmalloc},
            f'on: {tcmalloc} to be added by xception_jax')
  huge_pages = libc is not None and libc >= (2, 35) and mode == 'madvise'
  if choice == 'huge-pages':
    if libc is None or libc < (2, 35):
      return None, 'off: huge pages need glibc 2.35 or later'
    if not huge_pages:   # 'always' gives them without asking; 'never' refuses.
      return None, f'left to the kernel: transparent huge pages {mode or "unknown"}'
    settings = [HUGE_PAGES]
  elif libc is None or libc < (2, 26):
    return None, 'off: glibc 2.26 or later needed (tunables)'
  else:
    settings = [*KEPT_HEAP, *[HUGE_PAGES] * huge_pages]
  added = ':'.join(settings)
  return ({**environ, 'GLIBC_TUNABLES': ':'.join(filter(None, [tunables, added])),
           ADDED_MARK: added}, f'on: {added} to be added by xception_jax')


def keeps_heap(environ: Mapping[str, str]) -> bool:
  """Whether a process with `environ` runs with the kept heap that xception_jax added."""
  added = environ.get(ADDED_MARK, '').split(':')
  return set(KEPT_HEAP) <= set(added) <= set(environ.get('GLIBC_TUNABLES', '').split(':'))


def configure_jax(environ: Optional[Mapping[str, str]] = None) -> bool:
  """Where this process keeps its heap, makes XLA run each computation on the calling thread,
  so that a step's temporary memory comes from the main heap; returns whether it did.

  Call it after `reexec_with_allocator` and before JAX starts its backend.
  """
  if not keeps_heap(os.environ if environ is None else environ):
    return False
  import jax   # Here, not above: this module runs before JAX loads.
  jax.config.update('jax_cpu_enable_async_dispatch', False)
  return True


def _this_process(environ: Optional[Mapping[str, str]] = None,
                  ) -> tuple[Optional[dict[str, str]], str]:
  environ = os.environ if environ is None else environ
  wants_tcmalloc = environ.get(SWITCH) == 'tcmalloc'
  return allocator_environment(environ, glibc_version(), thp_mode(), accelerator_devices(),
                               sys.argv[1:], find_tcmalloc() if wants_tcmalloc else None)


def describe(environ: Optional[Mapping[str, str]] = None) -> str:
  """One line for the log: which allocator this process runs with (or one started with
  `environ`), and who chose it. Raises ValueError as `allocator_environment` does."""
  return _this_process(environ)[1]


def reexec_with_allocator() -> None:
  """Replaces this process by itself with the allocator chosen, where that helps; else returns.

  Call it first thing in an entry point, before JAX is imported: the process
  keeps its id, arguments and open files, and the second start finds the
  setting and returns. A bad `XCEPTION_JAX_MALLOC` ends the process with a
  one-line error.
  """
  try:
    environ, _ = _this_process()
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  if environ is None or not sys.executable:   # Embedded interpreters cannot start anew.
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
  except OSError:   # Running as is beats not running.
    return
