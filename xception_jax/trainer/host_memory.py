"""The memory allocator of a CPU training job: glibc asking for huge pages, or tcmalloc if asked.

On a CPU backend XLA takes each step's temporary memory (the activations,
about a GiB per step at batch 8) from malloc and gives it back at the end of
the step. glibc's malloc maps such large blocks from the kernel and unmaps
them when freed, so every step the kernel faults in and clears that memory
afresh; `glibc.malloc.hugetlb=1` makes the faults 512 times fewer. tcmalloc
keeps freed memory for the next step instead: steps 1.1-1.3x faster, but as
the training loop dispatches a step while the previous one runs, it keeps two
steps' activations (Xception at batch 8: 1.5x the peak resident memory), so
it is chosen only when asked for. What each gains and how it was measured:
docs/performance.md.

The allocator is chosen when a process starts, so `python -m xception_jax.main`
re-executes itself once, first thing, with `GLIBC_TUNABLES` (huge pages) or
`LD_PRELOAD` (tcmalloc) added, and only where that can help:

- not on a host with a GPU or TPU (the activations live on the device), nor
  when `JAX_PLATFORMS` names another platform than the CPU;
- not for `--help` and its kin, which never reach the training;
- not when you chose yourself: `LD_PRELOAD` naming an allocator, or
  `GLIBC_TUNABLES` setting `glibc.malloc.hugetlb` (yours is kept);
- huge pages not where glibc is older than 2.35, nor where the kernel's
  transparent huge pages are 'always' (given unasked) or 'never' (refused).

`XCEPTION_JAX_MALLOC` picks: `auto` (the default: huge pages), `tcmalloc`
(an error if it is not installed), `huge-pages` (the same as `auto`), or
`system` (run as is).

This module imports nothing beyond the standard library: it runs before JAX.
"""
from __future__ import annotations

import ctypes.util
import glob
import os
import sys
from typing import Mapping, Optional, Sequence

TUNABLE = 'glibc.malloc.hugetlb'
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
  if added and (added in preload.split() or added in tunables.split(':')):
    return None, f'on: {added} added by xception_jax'
  if any(name in preload for name in ALLOCATOR_NAMES):
    return None, f'as you set it: LD_PRELOAD={preload}'
  if TUNABLE in tunables:
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
  if libc is None or libc < (2, 35):
    return None, 'off: huge pages need glibc 2.35 or later'
  if mode != 'madvise':   # 'always' gives them without asking; 'never' refuses.
    return None, f'left to the kernel: transparent huge pages {mode or "unknown"}'
  added = f'{TUNABLE}=1'
  return ({**environ, 'GLIBC_TUNABLES': ':'.join(filter(None, [tunables, added])),
           ADDED_MARK: added}, f'on: {added} to be added by xception_jax')


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
