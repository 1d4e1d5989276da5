"""Orbax checkpoints of the training state: asynchronous saves, keep-last-K, resume."""
from __future__ import annotations

import contextlib
import functools
import logging as python_logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


def _key_name(key) -> str:
  for attribute in ('key', 'name', 'idx'):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def leaf_table(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """{'params/head/predictions/kernel': (shape, dtype), ...} of a state, abstract state or
  checkpoint metadata tree: the same paths whether keys are attributes, dict keys or indices."""
  return {'/'.join(_key_name(k) for k in path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def structure_difference(saved: dict, wanted: dict) -> str:
  """'' when two leaf tables are equal, else their differences in a few words."""
  lines = [f'{p} (not in the checkpoint)' for p in wanted if p not in saved]
  lines += [f'{p} (only in the checkpoint)' for p in saved if p not in wanted]
  lines += [f'{p} ({saved[p][0]} {saved[p][1]} saved, {wanted[p][0]} {wanted[p][1]} now)'
            for p in wanted if p in saved and saved[p] != wanted[p]]
  if not lines:
    return ''
  more = f' and {len(lines) - 3} more' if len(lines) > 3 else ''
  return f'{len(lines)} arrays differ: ' + ', '.join(lines[:3]) + more


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (no space, quota, permissions): a one-line message."""


def failure_reason(error: BaseException) -> str:
  """What went wrong in a few words: the OS error a TensorStore/Orbax message carries."""
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  code = re.search(r"os_error_code='(\d+)'", str(error))
  if code:
    return os.strerror(int(code.group(1)))
  return (str(error).splitlines() or [type(error).__name__])[0][:200]


def silence_failed_write_noise() -> None:
  """Keeps the echoes of a failed checkpoint write off the console, where
  CheckpointWriteError says it once: Orbax's logged tracebacks of the failed save,
  asyncio's '... exception was never retrieved' for its other writes, and
  TensorStore callbacks that reach Orbax's event loop after it closed."""
  def drop_orphaned_write(record):
    return not (record.getMessage().endswith('exception was never retrieved') and
                'orbax-checkpoint-tmp' in str(record.exc_info and record.exc_info[1]))

  def drop_orbax_tracebacks(record):
    return not ('orbax' in record.pathname and record.levelno >= python_logging.ERROR and
                record.exc_info)
  python_logging.getLogger('asyncio').addFilter(drop_orphaned_write)
  for handler in python_logging.getLogger().handlers:
    handler.addFilter(drop_orbax_tracebacks)
  previous = sys.unraisablehook

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError) and
            str(unraisable.exc_value) == 'Event loop is closed'):
      previous(unraisable)
  sys.unraisablehook = hook


class StructureMismatch(ValueError):
  """A readable checkpoint holds another state than the config builds (not damage)."""


@functools.cache
def whole_arrays_on_cpu() -> None:
  """Orbax writes each array from one replica, as it does on GPUs.

  By default it splits a replicated array between its replicas, each device
  writing a slice; on CPU the devices share the host's memory, so this only adds
  one op-by-op compiled slice per array and device to the first save. Orbax's
  handler registry is process-wide: this sets the jax.Array handler for the
  process, once.
  """
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


class Checkpoints:
  """Checkpoints of a `TrainState` under `directory`, one per saved step.

  Every process calls every method (Orbax coordinates multi-process saves).
  """

  def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
    self.directory = Path(directory).absolute()
    if jax.default_backend() == 'cpu':
      whole_arrays_on_cpu()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep,
                                           enable_async_checkpointing=async_save,
                                           create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=ocp.StandardCheckpointHandler())
    self._saving: Optional[int] = None  # The step of a save that may still fail.

  def steps(self) -> list[int]:
    """Steps of the completed checkpoints, ascending."""
    return sorted(self.manager.all_steps())

  def latest(self) -> Optional[int]:
    """Step of the newest completed checkpoint (None if none)."""
    return self.manager.latest_step()

  def save(self, state: Any, force: bool = False) -> bool:
    """Starts saving `state` at its step (returns at once when asynchronous).

    Raises CheckpointWriteError, before writing, when the file system has less
    free space than the state's size, and when this or an earlier asynchronous
    save fails; the failed save's temporary files are removed first.
    """
    step = int(jax.device_get(state.step))
    if step in self.manager.all_steps():
      return False
    with self._reporting_failures():
      self.manager.wait_until_finished()
    size = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    free = shutil.disk_usage(self.directory).free
    if size > free:
      raise CheckpointWriteError(
          f'Not enough space for the checkpoint of step {step} in {self.directory}: it needs '
          f'about {size / 2**20:.0f} MiB, {free / 2**20:.0f} MiB are free; '
          f'{self.latest_intact()}.')
    self._saving = step
    with self._reporting_failures():
      return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

  @contextlib.contextmanager
  def _reporting_failures(self):
    try:
      yield
    except Exception as e:
      step, self._saving = self._saving, None
      if isinstance(e, CheckpointWriteError) or step is None:
        raise
      self._remove_temporaries()
      raise CheckpointWriteError(
          f'Saving the checkpoint of step {step} in {self.directory} failed '
          f'({failure_reason(e)}); its temporary files were removed; '
          f'{self.latest_intact()}.') from None

  def latest_intact(self) -> str:
    """Which checkpoint a rerun resumes from, in words (for error messages)."""
    self.manager.reload()
    latest = self.manager.latest_step()
    if latest is None:
      return 'there is no intact checkpoint yet'
    return f'the latest intact checkpoint is step {latest} (rerun the command to resume from it)'

  def _remove_temporaries(self) -> None:
    if jax.process_index() == 0:
      for path in self.directory.glob('*.orbax-checkpoint-tmp*'):
        shutil.rmtree(path, ignore_errors=True)

  def restore(self, step: int, abstract_state: Any) -> Any:
    """The state saved at `step`, placed like `abstract_state` (ShapeDtypeStructs with shardings)."""
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

  def restore_arrays(self, step: int) -> dict[str, Any]:
    """The tree saved at `step`, on this process's first device, whatever mesh saved it.

    For evaluation, prediction and inspection; training restores with `restore`.
    """
    tree = self.manager.item_metadata(step).tree
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
    return self.manager.restore(step, args=ocp.args.StandardRestore(target))

  def restore_latest(self, abstract_state: Any) -> Optional[Any]:
    """The newest readable checkpoint's state, or None when there is none.

    A checkpoint that fails to read (missing, truncated or corrupt files) is
    logged, renamed to '<step>.damaged' (kept for inspection, never restored
    again) and the next older one is tried. A readable checkpoint of another
    structure (another model or optimizer) is a StructureMismatch, with
    nothing renamed.
    """
    damaged = []
    wanted = leaf_table(abstract_state)
    for step in reversed(self.steps()):
      difference = ''
      try:  # Damage surfaces as many exception types, from the metadata or the arrays.
        difference = structure_difference(leaf_table(self.manager.item_metadata(step).tree),
                                          wanted)
        if not difference:
          state = self.restore(step, abstract_state)
      except Exception as e:
        logging.warning('Checkpoint at step %d in %s is unreadable (%s: %s); falling back to '
                        'an older one.', step, self.directory, type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else '')
        damaged.append(step)
        continue
      if difference:
        raise StructureMismatch(
            f'The checkpoint at step {step} in {self.directory} holds a state of another '
            f'structure than this config builds ({difference}); nothing was changed. Resume '
            'with the config it was saved with, or use a new workdir.')
      self._set_aside(damaged)
      logging.info('Resuming from the checkpoint at step %d in %s', step, self.directory)
      return state
    self._set_aside(damaged)
    return None

  def _set_aside(self, steps: list[int]) -> None:
    if not steps:
      return
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('checkpoints: restore attempts done')
    if jax.process_index() == 0:
      for step in steps:
        path = self.directory / str(step)
        target = path.with_name(f'{step}.damaged')
        while target.exists():
          target = target.with_name(target.name + '_')
        path.rename(target)
        logging.warning('Set the damaged checkpoint aside as %s', target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('checkpoints: damaged set aside')
    self.manager.reload()

  def wait(self) -> None:
    """Blocks until asynchronous saves have finished (CheckpointWriteError if one failed)."""
    with self._reporting_failures():
      self.manager.wait_until_finished()
    self._saving = None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()
