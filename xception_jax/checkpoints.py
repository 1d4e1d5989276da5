"""Orbax checkpoints of the training state: asynchronous saves, keep-last-K, resume."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpoints:
  """Checkpoints of a `TrainState` under `directory`, one per saved step.

  Every process calls every method (Orbax coordinates multi-process saves).
  """

  def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep,
                                           enable_async_checkpointing=async_save,
                                           create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    """Steps of the completed checkpoints, ascending."""
    return sorted(self.manager.all_steps())

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
    """The tree saved at `step` as host arrays, without a target (e.g. for evaluation)."""
    return self.manager.restore(step, args=ocp.args.StandardRestore())

  def restore_latest(self, abstract_state: Any) -> Optional[Any]:
    """The newest checkpoint's state, or None when there is none."""
    step = self.manager.latest_step()
    if step is None:
      return None
    logging.info('Resuming from the checkpoint at step %d in %s', step, self.directory)
    return self.restore(step, abstract_state)

  def wait(self) -> None:
    """Blocks until asynchronous saves have finished."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
