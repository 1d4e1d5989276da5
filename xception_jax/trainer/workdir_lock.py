"""One run per workdir: a lock file naming its holder (host, process id, start time).

The file is created atomically (O_EXCL) and its modification time is refreshed
while the run lives. Another run finds it and stops, unless the lock is stale:
its holder was on this host and is gone, or it was on another host and the
file was not refreshed for `stale_seconds`.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

from absl import logging

LOCK_FILE = 'run.lock'


class WorkdirBusy(ValueError):
  """Another live run holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's live process.
    return True
  return True


def describe(holder: dict) -> str:
  started = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))
  return f'host {holder.get("host")}, process {holder.get("pid")}, started {started}'


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds `workdir/run.lock` for the block's duration."""

  def __init__(self, workdir: str | os.PathLike, stale_seconds: float = 600.0):
    self.path = Path(workdir) / LOCK_FILE
    self.stale_seconds = stale_seconds
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def holder(self) -> Optional[dict]:
    """The lock file's content (None when there is none; {} while it is being written)."""
    try:
      text = self.path.read_text()
    except FileNotFoundError:
      return None
    try:
      return json.loads(text)
    except json.JSONDecodeError:
      return {}

  def stale_reason(self, holder: dict) -> str:
    """Why `holder`'s lock no longer protects a run ('' when it does)."""
    try:
      age = time.time() - self.path.stat().st_mtime
    except FileNotFoundError:
      return 'released'
    if holder.get('host') == socket.gethostname() and 'pid' in holder:
      return '' if _alive(holder['pid']) else 'its process is gone'
    if age > self.stale_seconds:
      return f'not refreshed for {age:.0f} s (workdir_lock_stale_seconds={self.stale_seconds:g})'
    return ''

  def acquire(self) -> None:
    """Takes the lock, or raises WorkdirBusy naming the live holder."""
    mine = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': time.time(),
            'token': self.token}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self.holder()
        if holder == {}:  # Its writer is between create and write.
          time.sleep(0.2)
          holder = self.holder()
        if holder is None:
          continue
        reason = self.stale_reason(holder)
        if not reason:
          raise WorkdirBusy(
              f'Workdir {self.path.parent} is in use by another run ({describe(holder)}; lock '
              f'file {self.path}). Wait for it to end, or use another workdir.') from None
        if self.holder() == holder:  # Not taken over by someone else meanwhile.
          logging.warning('Taking over the stale lock of %s: %s.', describe(holder), reason)
          self.path.unlink(missing_ok=True)
        continue
      with os.fdopen(fd, 'w') as f:
        json.dump(mine, f)
      self._thread = threading.Thread(target=self._refresh, daemon=True, name='workdir-lock')
      self._thread.start()
      return
    raise WorkdirBusy(f'Could not take the lock {self.path}: other runs keep taking it.')

  def _refresh(self) -> None:
    while not self._stop.wait(max(1.0, self.stale_seconds / 10)):
      try:
        os.utime(self.path)
      except OSError:  # Removed under us, or the file system is gone: nothing to refresh.
        pass

  def release(self) -> None:
    """Removes the lock file if this lock holds it."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
      holder = self.holder()
      if holder and holder.get('token') == self.token:
        self.path.unlink(missing_ok=True)

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


@contextlib.contextmanager
def held_by_process_zero(workdir: str | os.PathLike, stale_seconds: float):
  """The workdir's lock for a whole (possibly multi-process) run: process 0 takes it and
  tells the others, so that every process stops when another run holds it."""
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  lock, error = WorkdirLock(workdir, stale_seconds), ''
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except WorkdirBusy as e:
      error = str(e)
  if jax.process_count() > 1:
    taken = bool(multihost_utils.broadcast_one_to_all(np.int32(not error)))
    if not taken and not error:
      error = f'Process 0 could not take the lock of {workdir}; its error says why.'
  if error:
    raise WorkdirBusy(error)
  try:
    yield lock
  finally:
    lock.release()
