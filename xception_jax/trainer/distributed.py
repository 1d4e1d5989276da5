"""Multi-process start-up: `jax.distributed.initialize` when the config asks for it."""
from __future__ import annotations

import jax
import ml_collections


def initialize(config: ml_collections.ConfigDict) -> None:
  """Joins the process group described by `config.distributed` (once per process).

  `enabled=True` with no addresses lets JAX discover the cluster (Cloud TPU,
  SLURM); `coordinator_address`, `num_processes` and `process_id` set it explicitly.
  """
  options = config.get('distributed')
  if not options or not options.get('enabled') or jax.distributed.is_initialized():
    return
  kwargs = {key: options.get(key) for key in ('coordinator_address', 'num_processes',
                                               'process_id')
            if options.get(key) is not None}
  jax.distributed.initialize(**kwargs)
