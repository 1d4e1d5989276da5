"""Any model as a Flax NNX module (`flax.nnx.bridge.ToNNX`), holding given variables."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx


def to_nnx(model: nn.Module, variables: dict[str, Any],
           rngs: Optional[nnx.Rngs] = None) -> nnx.Module:
  """`model` as an NNX module whose state is `variables` ({'params', 'batch_stats'}).

  Call it as the linen model: `module(x, train=False)` for inference,
  `module(x, train=True, mutable=['batch_stats'])` for training (the BN
  statistics update in the module; dropout draws from `rngs`' 'dropout'
  stream, default `nnx.Rngs(dropout=0)`). The module is built abstractly and
  then given `variables`, so no initialiser runs.
  """
  from xception_jax.weights.tree import template_input_size
  size = template_input_size(model)
  sample = jnp.zeros((1, size, size, 3), jnp.float32)
  module = nnx.eval_shape(lambda: nnx.bridge.ToNNX(model, rngs=nnx.Rngs(0)).lazy_init(sample))
  nnx.update(module, nnx.bridge.variables.linen_vars_to_nnx_attrs(dict(variables)))
  module.to_nnx__rngs = rngs if rngs is not None else nnx.Rngs(dropout=0)
  return module
