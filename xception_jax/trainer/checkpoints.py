"""Orbax checkpoints of the training state: asynchronous saves, keep-last-K, resume."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class Checkpoints:
  """Checkpoints of a `TrainState` under `directory`, one per saved step.

  Every process calls every method (Orbax coordinates multi-process saves).
  """

  def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep,
                                           enable_async_checkpointing=async_save,
                                           create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=ocp.StandardCheckpointHandler())

  def steps(self) -> list[int]:
    """Steps of the completed checkpoints, ascending."""
    return sorted(self.manager.all_steps())

  def latest(self) -> Optional[int]:
    """Step of the newest completed checkpoint (None if none)."""
    return self.manager.latest_step()

  def save(self, state: Any, force: bool = False) -> bool:
    """Starts saving `state` at its step (returns at once when asynchronous)."""
    step = int(jax.device_get(state.step))
    if step in self.manager.all_steps():
      return False
    return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

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

    A checkpoint that fails to restore (truncated or corrupt files) is logged,
    renamed to '<step>.damaged' (kept for inspection, never restored again) and
    the next older one is tried.
    """
    damaged = []
    for step in reversed(self.steps()):
      try:
        state = self.restore(step, abstract_state)
      except Exception as e:  # Damage surfaces as many exception types.
        logging.warning('Checkpoint at step %d in %s is unreadable (%s: %s); falling back to '
                        'an older one.', step, self.directory, type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else '')
        damaged.append(step)
        continue
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
    """Blocks until asynchronous saves have finished."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
