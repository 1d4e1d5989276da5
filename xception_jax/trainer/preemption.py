"""Preemption notices (SIGTERM) turned into a step at which every process stops together."""
from __future__ import annotations

import signal

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatcher:
  """`should_stop(step)` is True at the first step after a SIGTERM, on every process.

  Multi-process runs use JAX's preemption sync point: the coordination service
  hears the SIGTERM on any host and all hosts agree on the step at which to
  save. A single process catches SIGTERM itself. Call `should_stop` after every
  training step, with the same step ids on every process.
  """

  def __init__(self):
    self.multi_process = jax.process_count() > 1
    self._signalled = False
    self._previous = None
    if not self.multi_process:
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: finishing the current step, then saving and exiting.')
    self._signalled = True

  def should_stop(self, step: int) -> bool:
    if self.multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled

  def close(self) -> None:
    """Restores the SIGTERM handler that was in place before."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
