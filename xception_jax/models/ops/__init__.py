"""Fast forms of the operations whose XLA kernels are slow, one module per family.

Each form equals XLA's operation up to float rounding, gradients included, and
keeps its parameters: `Execution` (models/execution.py) picks among them. Why
each exists and what it gains: docs/performance.md.
  depthwise   shifted_depthwise: summed shifted slices instead of a grouped conv
  convs       pointwise_dot, im2col_conv and the dispatching conv_general_dilated_fn
  onednn      conv: any of the three conv families in oneDNN's kernels (XLA FFI, CPU)
  pooling     shifted_max_pool: maximum of shifted windows, gradient as select-and-scatter
  batch_norm  batch_norm_train and FusedBatchNorm: the gradient in two sums and one pass
  windows     the shifted-window helpers they share, and `stored`
"""
from xception_jax.models.ops.batch_norm import FusedBatchNorm, batch_norm_train
from xception_jax.models.ops.convs import (IM2COL_MAX_TAPS, conv_general_dilated_fn,
                                           im2col_conv, pointwise_dot)
from xception_jax.models.ops.depthwise import shifted_depthwise
from xception_jax.models.ops.pooling import shifted_max_pool
from xception_jax.models.ops.windows import explicit_pads, scatter_windows, stored, windows

__all__ = ['FusedBatchNorm', 'IM2COL_MAX_TAPS', 'batch_norm_train', 'conv_general_dilated_fn',
           'explicit_pads', 'im2col_conv', 'pointwise_dot', 'scatter_windows', 'shifted_depthwise',
           'shifted_max_pool', 'stored', 'windows']
