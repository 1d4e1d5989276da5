"""Fast depthwise, 1×1 conv, k×k conv and max-pool forms equal XLA's, values and gradients."""
import dataclasses
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from helpers import assert_trees_close as assert_close
from benchmarks.model_convs import equations
from helpers import random_variables, train_gradients, variable_shapes
from xception_jax import models
from xception_jax.models import execution, layers, ops
from xception_jax.models.ops.windows import stored_with_gradient

TINY = models.Xception.tiny_options
SHAPES = [(7, 1), (8, 1), (7, 2), (8, 2), (9, 2)]   # (size, stride): odd and even, both strides.
ids = [f'{size}px-s{stride}' for size, stride in SHAPES]


def random(shape, seed):
  return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def value_and_grads(f, *args):
  """f(*args) and the gradient of a non-linear loss of it w.r.t. every argument."""
  y, vjp = jax.vjp(f, *args)
  return y, vjp(jnp.cos(y))


def max_pool(x, window, stride, padding, form):
  return models.Execution(pool=form).max_pool()(x, window, stride, padding)


def conv_module(impls, features, kernel, stride, groups, padding='SAME'):
  """nn.Conv with `impls` = the (depthwise, pointwise, conv) forms."""
  return nn.Conv(features, kernel, stride, padding=padding, feature_group_count=groups,
                 use_bias=False, conv_general_dilated=ops.conv_general_dilated_fn(*impls))


def module_value_and_grads(module, x):
  """`module`'s variables, and its output and gradients, each computed by one program."""
  variables = jax.jit(module.init)(jax.random.PRNGKey(1), x)
  return variables, jax.jit(functools.partial(value_and_grads, module.apply))(variables, x)


@pytest.mark.parametrize('size, stride', SHAPES, ids=ids)
@pytest.mark.parametrize('padding', ['SAME', 'VALID', ((2, 0), (1, 1))])
def test_shifted_depthwise_equals_grouped_conv(size, stride, padding):
  x = random((2, size, size, 6), 0)
  reference, fast = (conv_module((impl, 'xla', 'xla'), 6, (3, 3), stride, 6, padding)
                     for impl in ('xla', 'shifted'))
  variables, want = module_value_and_grads(reference, x)
  fast_variables, got = module_value_and_grads(fast, x)
  # Same module, same parameters: initialisation and names are untouched.
  assert jax.tree.map(jnp.shape, fast_variables) == {'params': {'kernel': (3, 3, 1, 6)}}
  assert_close(fast_variables, variables, tol=0)
  assert_close(got, want)


@pytest.mark.parametrize('batch', [12, 24])   # Not a multiple of the 8-image groups; three groups.
def test_shifted_depthwise_kernel_gradient_sums_images_in_groups(batch):
  x = random((batch, 9, 9, 6), 0)
  reference, fast = (conv_module((impl, 'xla', 'xla'), 6, (3, 3), 2, 6, 'SAME')
                     for impl in ('xla', 'shifted'))
  _, want = module_value_and_grads(reference, x)
  _, got = module_value_and_grads(fast, x)
  assert_close(got, want)


@pytest.mark.parametrize('size, stride', SHAPES, ids=ids)
def test_pointwise_dot_equals_1x1_conv(size, stride):
  x = random((2, size, size, 6), 0)
  reference, fast = (conv_module(('xla', impl, 'xla'), 5, (1, 1), stride, 1)
                     for impl in ('xla', 'dot'))
  _, want = module_value_and_grads(reference, x)
  _, got = module_value_and_grads(fast, x)
  assert_close(got, want)


@pytest.mark.parametrize('size, stride, kernel, padding', [
    (7, 1, (3, 3), 'SAME'), (8, 2, (3, 3), 'SAME'), (9, 2, (3, 3), 'VALID'),
    (8, 1, (3, 3), ((2, 0), (1, 1))), (7, 2, (1, 3), 'SAME'), (8, 1, (3, 1), 'VALID'),
    (9, 1, (1, 7), 'SAME'), (8, 2, (7, 1), 'SAME'), (7, 1, (2, 2), 'SAME')])
def test_im2col_conv_equals_xla_conv(size, stride, kernel, padding):
  x = random((2, size, size, 6), 0)
  reference, fast = (conv_module(('xla', 'xla', impl), 5, kernel, stride, 1, padding)
                     for impl in ('xla', 'im2col'))
  variables, want = module_value_and_grads(reference, x)
  fast_variables, got = module_value_and_grads(fast, x)
  assert jax.tree.map(jnp.shape, fast_variables) == {'params': {'kernel': (*kernel, 6, 5)}}
  assert_close(got, want)


def test_im2col_conv_bfloat16_keeps_dtype():
  x, kernel = random((2, 9, 9, 4), 0), random((3, 3, 4, 5), 1)
  y = ops.im2col_conv(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), (2, 2), 'SAME')
  want = lax.conv_general_dilated(x, kernel, (2, 2), 'SAME',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(y.astype(jnp.float32), want, atol=0.05 * float(np.abs(want).max()))


@pytest.mark.parametrize('features, kernel, groups, padding', [
    (6, (3, 3), 2, 'SAME'),        # grouped, not depthwise
    (12, (3, 3), 6, 'SAME'),       # depth multiplier 2
    (5, (5, 5), 1, 'SAME'),        # more than IM2COL_MAX_TAPS taps
    (5, (1, 1), 1, ((1, 0), (0, 1))),   # padded 1×1
])
def test_other_convs_are_left_to_xla(features, kernel, groups, padding):
  x = random((2, 7, 7, 6), 0)
  fast = conv_module(('shifted', 'dot', 'im2col'), features, kernel, 1, groups, padding)
  reference = conv_module(('xla', 'xla', 'xla'), features, kernel, 1, groups, padding)
  variables = reference.init(jax.random.PRNGKey(1), x)
  assert_close(fast.apply(variables, x), reference.apply(variables, x), tol=0)


def test_dilated_depthwise_is_left_to_xla():
  x, kernel = random((1, 9, 9, 4), 0), random((3, 3, 1, 4), 1)
  conv = functools.partial(lax.conv_general_dilated, x, kernel, (1, 1), 'SAME',
                           rhs_dilation=(2, 2), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                           feature_group_count=4)
  fast = ops.conv_general_dilated_fn('shifted', 'dot', 'im2col')
  assert_close(fast(x, kernel, (1, 1), 'SAME', rhs_dilation=(2, 2),
                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=4),
               conv(), tol=0)


def test_shifted_depthwise_bfloat16_keeps_dtype():
  x, kernel = random((2, 8, 8, 4), 0), random((3, 3, 1, 4), 1)
  y = ops.shifted_depthwise(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), (1, 1), 'SAME')
  want = ops.shifted_depthwise(x, kernel, (1, 1), 'SAME')
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(y.astype(jnp.float32), want, atol=0.05 * float(np.abs(want).max()))


@pytest.mark.parametrize('size, stride', SHAPES, ids=ids)
@pytest.mark.parametrize('padding', ['SAME', 'VALID'])
def test_shifted_max_pool_is_identical_with_ties(size, stride, padding):
  # Values on a coarse grid: many windows hold several equal maxima, where the
  # gradient must go to the first one, as XLA's select-and-scatter does.
  x = jnp.round(random((2, size, size, 3), 0) * 2) / 2
  want = value_and_grads(lambda x: max_pool(x, 3, stride, padding, 'xla'), x)
  got = value_and_grads(lambda x: max_pool(x, 3, stride, padding, 'shifted'), x)
  assert_close(got, want, tol=0)
  jitted = jax.jit(lambda x: value_and_grads(
      lambda x: max_pool(x, 3, stride, padding, 'shifted'), x))
  assert_close(jitted(x), want, tol=0)


def test_shifted_max_pool_gradient_after_fused_batch_norm():
  """Regression: a pool's input recomputed by XLA in two fusions can differ in the last bit.

  A gradient that compared the input with the forward's maximum lost whole
  windows here (relative error 1.0); finding the maximum again does not.
  """
  conv, norm = layers.conv_and_norm_defs(train=True, dtype=jnp.float32,
                                         param_dtype=jnp.float32, bn_momentum=0.99,
                                         bn_epsilon=1e-3, bn_scale=True,
                                         execution=models.Execution())
  sep = functools.partial(layers.SeparableConvBN, conv=conv, norm=norm)
  x = random((2, 33, 33, 64), 0)

  def gradients(form):
    block = models.xception.XceptionModule((128, 128), sep=sep, conv=conv, norm=norm,
                                           max_pool=models.Execution(pool=form).max_pool(),
                                           downsample=True, relu_first=False)
    variables = jax.jit(block.init)(jax.random.PRNGKey(1), x)
    def loss(params, x):
      y, _ = block.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(y))
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables['params'], x)

  assert_close(gradients('shifted'), gradients('xla'), tol=1e-5)


def test_stored_is_the_identity_in_value_and_gradient():
  for a in (jnp.array([[-jnp.inf, jnp.nan, 3.5], [jnp.inf, -0.0, 1e-30]]),
            jnp.arange(-128, 128, dtype=jnp.int32).astype(jnp.int8).reshape(16, 16),
            jnp.array([jnp.iinfo(jnp.int32).min, 7], jnp.int32)):
    stored = jax.jit(ops.stored)(a)
    assert stored.dtype == a.dtype
    np.testing.assert_array_equal(stored, a)
  w = random((3, 4), 1)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(ops.stored(x) * w)))(random((3, 4), 0))
  np.testing.assert_array_equal(grad, w)


def test_shifted_max_pool_gradient_stores_each_windows_winner():
  """The winning tap of every window is stored once, as int8, not searched again per read.

  Fused into the scatter instead, XLA searched each window up to four times
  (3×3 stride 2) and the gradient took twice as long.
  """
  x = random((2, 15, 15, 8), 0)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.cos(
      max_pool(jax.nn.relu(x), 3, 2, 'VALID', 'shifted')))))
  hlo = grad.lower(x).compile().as_text()
  assert re.search(r's8\[2,7,7,8,1\]\{[^}]*\} reduce-window', hlo)


def test_scatter_windows_is_the_transpose_of_windows():
  xp = random((1, 9, 8, 2), 0)
  for window, strides in [((3, 3), (2, 2)), ((3, 2), (1, 3)), ((1, 1), (2, 2))]:
    taps, transpose = jax.vjp(lambda xp: list(ops.windows(xp, window, strides)), xp)
    values = {(i, j): random(tap.shape, i * 7 + j) for i, j, tap in taps}
    want, = transpose([(i, j, values[i, j]) for i, j, _ in taps])
    assert_close(ops.scatter_windows(values, strides, xp.shape[1:3]), want)


def largest_fusion(hlo: str) -> int:
  """The most operands any fusion of a compiled program reads."""
  return max(m.group(1).count('%') for m in re.finditer(r' fusion\(([^)]*)\)', hlo))


def residual_chain(blocks: int, store: bool):
  """The gradient of Σ y² after `blocks` residual steps y ← relu(y + 0.1·y·W) (each W's
  product a step XLA does not fuse, as a block's convs), and its compiled program."""
  def loss(weights, y):
    for w in weights:
      y = jax.nn.relu(y + 0.1 * (y @ w))
      y = stored_with_gradient(y) if store else y
    return jnp.sum(y ** 2)
  weights = [random((16, 16), seed) for seed in range(blocks)]
  y = random((32, 16), blocks)
  gradient = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return gradient(weights, y), gradient.lower(weights, y).compile().as_text()


def test_stored_residual_sums_are_not_recomputed_along_the_chain():
  """XLA's CPU fusion recomputes every earlier residual sum inside each later one (its
  largest fusion grows with the chain); stored both ways, each sum and each gradient is
  computed once. Same values and gradients."""
  fused = {blocks: residual_chain(blocks, False) for blocks in (3, 12)}
  stored = {blocks: residual_chain(blocks, True) for blocks in (3, 12)}
  assert largest_fusion(fused[12][1]) > largest_fusion(fused[3][1]) + 6
  assert largest_fusion(stored[12][1]) == largest_fusion(stored[3][1]) <= 4
  assert stored[12][1].count(' reduce-window(') == 2 * 12    # Each sum and its gradient.
  for blocks in (3, 12):
    assert_close(stored[blocks][0], fused[blocks][0], tol=1e-6)


@pytest.mark.long(seconds=10)
def test_inception_resnet_trains_the_same_with_stored_residuals():
  """The whole model, all else XLA's own operations: same logits, BN statistics and
  gradients."""
  reference = models.create_model('inception_resnet_v2', num_classes=5, width_multiplier=0.25,
                                  block_repeats=(2, 2, 2), execution=models.Execution.reference())
  fast = reference.clone(execution=models.Execution.reference().replace(residual='stored'))
  variables = random_variables(reference, 75)
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 75, 75, 3), jnp.float32, -1, 1)
  assert_close(train_gradients(fast, variables, x), train_gradients(reference, variables, x),
               tol=1e-5)


def test_execution_names_are_checked_and_auto_resolves_per_backend():
  for backend in ('cpu', 'gpu', 'tpu'):
    resolved = models.Execution().resolved(backend)
    assert 'auto' not in dataclasses.astuple(resolved)
    assert models.Execution(depthwise='xla', remat=True).resolved(backend).depthwise == 'xla'
  assert models.Execution().resolved('tpu') == models.Execution.reference()  # Unmeasured.
  assert models.Execution().resolved('cpu').residual == 'stored'
  assert models.Execution().resolved('gpu').residual == 'xla'
  assert models.Execution.reference().conv_general_dilated() is lax.conv_general_dilated
  with pytest.raises(ValueError, match="Unknown depthwise form 'fast'; choose one of 'auto'"):
    models.create_model('xception', execution={'depthwise': 'fast'})
  with pytest.raises(ValueError, match='execution has no field'):
    models.create_model('xception', execution={'depthwse': 'xla'})


def test_old_option_names_still_build_the_same_model():
  with pytest.warns(DeprecationWarning, match=r'depthwise_impl, remat are deprecated.*'
                                              r"Execution\(depthwise='xla', remat=True\)"):
    model = models.create_model('xception', depthwise_impl='xla', remat=True, **TINY)
  assert model.execution == models.Execution(depthwise='xla', remat=True)
  assert model == models.create_model('xception', execution=model.execution, **TINY)


def test_the_form_pair_that_aborted_xla_on_a_gpu_warns_there(monkeypatch, caplog):
  execution._warn_once.cache_clear()
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  for forms in (dict(depthwise='shifted'), dict(pointwise='dot'),
                dict(depthwise='shifted', pointwise='dot'),
                dict(depthwise='shifted', pointwise='dot', conv='im2col')):
    models.Execution(**forms).conv_general_dilated()
  assert [r.getMessage().split(' made ')[0] for r in caplog.records] == [
      "depthwise='shifted' with pointwise='dot'"]


@pytest.mark.long(seconds=15)
@pytest.mark.parametrize('name, size, forms, dtype, tol', [
    ('xception', 71, dict(depthwise='shifted', conv='im2col'), jnp.float32, 1e-4),
    # Training-mode BN over Inception-V3's last, 1×1 maps of 2 images is so
    # ill-conditioned that float32 XLA is itself ~20% off its float64 result:
    # compare in float64.
    ('inception_v3', 75, dict(avg_pool='after_pointwise'), jnp.float64, 1e-9),
], ids=['xception', 'inception_v3'])
def test_fast_forms_match_reference_in_training(name, size, forms, dtype, tol):
  """The whole model: same parameters, same logits, BN statistics and gradients."""
  model_options = {'xception': TINY, 'inception_v3': dict(width_multiplier=0.125, bn_scale=True)}
  with jax.enable_x64(dtype == jnp.float64):
    fast = models.create_model(
        name, num_classes=5, dtype=dtype, param_dtype=dtype, **model_options[name],
        execution=models.Execution(pointwise='dot', pool='shifted', norm='fused', **forms))
    reference = fast.clone(execution=models.Execution.reference())
    # Numpy-made variables: initialising two float64 models op by op took 16 s.
    variables = jax.tree.map(lambda v: v.astype(dtype), random_variables(reference, size))
    assert variable_shapes(fast, size) == jax.tree.map(jnp.shape, variables)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, size, size, 3), dtype, -1, 1)
    assert_close(train_gradients(fast, variables, x), train_gradients(reference, variables, x),
                 tol=tol)


@pytest.mark.parametrize('count_include_pad', [False, True], ids=['tf', 'pytorch'])
def test_average_pool_after_the_pointwise_conv_equals_it_before(count_include_pad):
  """An Inception block's pooling branch with its 1×1 conv first: the same outputs and
  gradients. A pool before a 3×3 conv (borders differ) or with a stride stays first."""
  from xception_jax.models.inception_blocks import AVG, Conv, InceptionBlock, Pool
  branches = ((Conv(4, 1),), (AVG, Conv(3, 1)), (AVG, Conv(5, 3)),
              (Pool('avg', 3, 2, 'SAME'), Conv(2, 1, 2)))
  with jax.enable_x64():
    conv, norm = layers.conv_and_norm_defs(
        train=True, dtype=jnp.float64, param_dtype=jnp.float64, bn_momentum=0.9,
        bn_epsilon=1e-3, bn_scale=True, execution=models.Execution.reference())
    blocks = [InceptionBlock(branches[:3], conv, norm, max_pool=None,
                             count_include_pad=count_include_pad, avg_pool_after_pointwise=after)
              for after in (False, True)]
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 8, 6), jnp.float64)
    variables = blocks[0].init(jax.random.PRNGKey(1), x)

    def run(block):
      def loss(params, x):
        y, state = block.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
        return jnp.sum(jnp.sin(y)), (y, state)
      grads, outputs = jax.grad(loss, argnums=(0, 1), has_aux=True)(variables['params'], x)
      pooled = {e.invars[0].aval.shape[-1] for e in equations(jax.make_jaxpr(
          lambda x: block.apply(variables, x, mutable=['batch_stats']))(x).jaxpr)
                if e.primitive.name == 'reduce_window_sum'}
      return (grads, outputs), pooled

    (before, pooled_before), (after, pooled_after) = map(run, blocks)
    assert_close(after, before, tol=1e-12)
    assert 6 in pooled_after and 3 in pooled_after and 3 not in pooled_before  # It moved.
    strided = [InceptionBlock(branches[3:], conv, norm, max_pool=None,
                              avg_pool_after_pointwise=after) for after in (False, True)]
    strided_variables = strided[0].init(jax.random.PRNGKey(1), x)
    assert str(jax.make_jaxpr(lambda x: strided[1].apply(strided_variables, x, mutable=[
        'batch_stats']))(x)) == str(jax.make_jaxpr(lambda x: strided[0].apply(
            strided_variables, x, mutable=['batch_stats']))(x))   # Left as it was.


def batch_norm_run(layer, variables, x, train):
  """Output, variable gradients and updated statistics of a loss that weights channels."""
  def loss(params, x):
    y, state = layer.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
    return jnp.sum(jnp.sin(y) * jnp.arange(y.shape[-1])), (y, state)
  # Jitted: op by op, XLA would compile each of the normalisation's operations on its own.
  grads, (y, state) = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(
      variables['params'], x)
  return y, grads, state


@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
def test_fused_batch_norm_equals_flax(train):
  x = random((4, 5, 5, 6), 0) * 3 + 1
  options = dict(use_running_average=not train, momentum=0.9, epsilon=1e-3)
  reference, fused = nn.BatchNorm(**options), ops.FusedBatchNorm(**options)
  variables = reference.init(jax.random.PRNGKey(1), x)
  assert_close(fused.init(jax.random.PRNGKey(1), x), variables, tol=0)
  variables = {'params': {'scale': jnp.linspace(0.5, 1.5, 6), 'bias': jnp.linspace(-1, 1, 6)},
               'batch_stats': {'mean': jnp.full(6, 0.1), 'var': jnp.full(6, 2.0)}}
  assert_close(batch_norm_run(fused, variables, x, train),
               batch_norm_run(reference, variables, x, train), tol=2e-5)


def test_fused_batch_norm_bfloat16_and_no_scale():
  x = random((4, 3, 3, 5), 0).astype(jnp.bfloat16)
  options = dict(use_running_average=False, use_scale=False, dtype=jnp.bfloat16)
  fused, reference = ops.FusedBatchNorm(**options), nn.BatchNorm(**options)
  variables = reference.init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, fused.init(jax.random.PRNGKey(1), x)) == \
      jax.tree.map(jnp.shape, variables)
  got, want = (layer.apply(variables, x, mutable=['batch_stats']) for layer in (fused, reference))
  assert got[0].dtype == jnp.bfloat16
  assert_close(jax.tree.map(lambda a: a.astype(jnp.float32), got),
               jax.tree.map(lambda a: a.astype(jnp.float32), want), tol=2e-2)


@pytest.mark.long
def test_fused_batch_norm_synchronises_over_devices():
  """With axis_name, statistics and gradients are the whole batch's, as with nn.BatchNorm."""
  # Two of the CPU devices conftest makes, so the test runs on a one-GPU machine too.
  cpus = jax.devices('cpu')
  with jax.default_device(cpus[0]):
    _check_fused_batch_norm_over_devices(jax.make_mesh((2,), ('batch',), devices=cpus[:2]))


def _check_fused_batch_norm_over_devices(mesh):
  spec = jax.sharding.PartitionSpec
  x = random((4, 3, 3, 6), 0) * 2 + 0.5
  fused = ops.FusedBatchNorm(use_running_average=False, axis_name='batch')
  variables = fused.init(jax.random.PRNGKey(1), x)
  whole = batch_norm_run(fused.clone(axis_name=None), variables, x, True)
  spread = jax.device_put(x, jax.sharding.NamedSharding(mesh, spec('batch')))
  for layer in (fused, nn.BatchNorm(use_running_average=False, axis_name='batch')):
    # Inside shard_map the replicated parameters' gradients come out summed over devices.
    @functools.partial(jax.shard_map, mesh=mesh, in_specs=spec('batch'),
                       out_specs=((spec('batch'), spec('batch')), spec()))
    def sharded(x):
      y, (param_grads, x_grad), state = batch_norm_run(layer, variables, x, True)
      return (y, x_grad), (param_grads, state)

    (y, x_grad), (param_grads, state) = sharded(spread)
    assert_close((y, (param_grads, x_grad), state), whole, tol=2e-5)
