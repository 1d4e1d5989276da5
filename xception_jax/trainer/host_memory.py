"""Huge pages for a CPU training job's host memory: glibc's malloc told to ask for them.

On a CPU backend XLA maps each step's activations afresh, and the kernel
faults them in 4 KiB at a time; `glibc.malloc.hugetlb=1` makes malloc mark its
mappings for transparent huge pages, 512 times fewer faults. The gain and how
it was measured: docs/performance.md. glibc reads its tunables only when a
process starts, so `python -m xception_jax.main` re-executes itself once,
first thing, with the tunable added, and only where that can help:

- not on a host with a GPU or TPU (the activations live on the device), nor
  when `JAX_PLATFORMS` names another platform than the CPU;
- not for `--help` and its kin, which never reach the training;
- not where glibc is older than 2.35, nor where the kernel's transparent huge
  pages are 'always' (given unasked) or 'never' (refused);
- not when `GLIBC_TUNABLES` already sets `glibc.malloc.hugetlb` (yours is
  kept), nor when `XCEPTION_JAX_HUGE_PAGES=0`.

This module imports nothing beyond the standard library: it runs before JAX.
"""
from __future__ import annotations

import glob
import os
import sys
from typing import Mapping, Optional, Sequence

TUNABLE = 'glibc.malloc.hugetlb'
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'
# Set to 0 to run as is.
SWITCH = 'XCEPTION_JAX_HUGE_PAGES'
# Set by the re-execution, so that the second start can say who set the tunable.
ADDED_MARK = 'XCEPTION_JAX_ADDED_TUNABLE'
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


def huge_page_environment(environ: Mapping[str, str], libc: Optional[tuple[int, int]],
                          mode: Optional[str], accelerators: Sequence[str] = (),
                          argv: Sequence[str] = ()) -> tuple[Optional[dict[str, str]], str]:
  """(the environment to re-execute with, or None to run as is; why, in a few words)."""
  tunables = environ.get('GLIBC_TUNABLES', '')
  if TUNABLE in tunables:
    added = environ.get(ADDED_MARK)
    if added and added in tunables.split(':'):
      return None, f'on: {added} added by xception_jax (GLIBC_TUNABLES={tunables})'
    return None, f'as you set them: GLIBC_TUNABLES={tunables}'
  if environ.get(SWITCH, '1') == '0':
    return None, f'off: {SWITCH}=0'
  if any(arg in HELP_FLAGS for arg in argv):
    return None, 'off: help only'
  platforms = [p.strip() for p in environ.get('JAX_PLATFORMS', '').split(',') if p.strip()]
  if platforms and platforms[0] != 'cpu':
    return None, f'off: JAX_PLATFORMS={environ["JAX_PLATFORMS"]} (activations on the device)'
  if not platforms and accelerators:
    return None, f'off: accelerator host ({accelerators[0]}; activations on the device)'
  if libc is None or libc < (2, 35):
    return None, 'off: needs glibc 2.35 or later'
  if mode != 'madvise':   # 'always' gives them without asking; 'never' refuses.
    return None, f'left to the kernel: transparent huge pages {mode or "unknown"}'
  added = f'{TUNABLE}=1'
  return ({**environ, 'GLIBC_TUNABLES': ':'.join(filter(None, [tunables, added])),
           ADDED_MARK: added}, f'on: {added} to be added by xception_jax')


def _this_process() -> tuple[Optional[dict[str, str]], str]:
  return huge_page_environment(os.environ, glibc_version(), thp_mode(), accelerator_devices(),
                               sys.argv[1:])


def describe() -> str:
  """One line for the log: whether this process's malloc asks for huge pages, and who said so."""
  return _this_process()[1]


def reexec_with_huge_pages() -> None:
  """Replaces this process by itself with the tunable set, where that helps; else returns.

  Call it first thing in an entry point, before JAX is imported: the process
  keeps its id, arguments and open files, and the second start finds the
  tunable and returns.
  """
  environ, _ = _this_process()
  if environ is None or not sys.executable:   # Embedded interpreters cannot start anew.
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
  except OSError:   # Running as is beats not running.
    return
