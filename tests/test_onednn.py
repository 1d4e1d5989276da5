"""oneDNN's convs (the 'onednn' form) equal XLA's, values and both gradients; how 'auto'
chooses them, and the one-line errors where they cannot run."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from helpers import assert_trees_close as assert_close
from helpers import random_variables, train_gradients
from test_ops import SHAPES, conv_module, ids, module_value_and_grads, random
from xception_jax import models
from xception_jax.models import execution
from xception_jax.models.ops import onednn

ONEDNN = models.Execution(depthwise='onednn', pointwise='onednn', conv='onednn')
# Three images: XLA's two CPU threads take one and two, so the parts differ in size.
BATCH = 3


def forms_equal(impls, features, kernel, stride, groups, padding, size=9, batch=BATCH):
  """`impls` = the (depthwise, pointwise, conv) forms against XLA's, on 6 input channels."""
  x = random((batch, size, size, 6), 0)
  reference = conv_module(('xla',) * 3, features, kernel, stride, groups, padding)
  fast = conv_module(impls, features, kernel, stride, groups, padding)
  variables, want = module_value_and_grads(reference, x)
  fast_variables, got = module_value_and_grads(fast, x)
  assert_close(fast_variables, variables, tol=0)
  assert_close(got, want)
  return fast, variables, x


@pytest.mark.parametrize('stride, kernel, padding', [
    (1, (3, 3), 'SAME'), (2, (3, 3), 'SAME'), (2, (3, 3), 'VALID'), (1, (3, 3), ((2, 0), (1, 1))),
    (2, (1, 3), 'SAME'), (1, (3, 1), 'VALID'), (1, (1, 7), 'SAME'), (2, (7, 1), 'SAME'),
    (1, (2, 2), 'SAME'), (1, (5, 5), 'SAME')])
def test_onednn_conv_equals_xla_conv(stride, kernel, padding):
  fast, variables, x = forms_equal(('xla', 'xla', 'onednn'), 5, kernel, stride, 1, padding)
  assert 'custom_call' in jax.jit(fast.apply).lower(variables, x).as_text()


@pytest.mark.parametrize('size, stride', SHAPES, ids=ids)
@pytest.mark.parametrize('padding', ['SAME', 'VALID', ((2, 0), (1, 1))])
def test_onednn_depthwise_equals_grouped_conv(size, stride, padding):
  forms_equal(('onednn', 'xla', 'xla'), 6, (3, 3), stride, 6, padding, size, 1 + size % 3)


@pytest.mark.parametrize('size, stride', SHAPES, ids=ids)
def test_onednn_pointwise_equals_1x1_conv(size, stride):
  forms_equal(('xla', 'onednn', 'xla'), 5, (1, 1), stride, 1, 'SAME', size, 1 + size % 3)


@pytest.mark.parametrize('features, groups, dtype', [
    (6, 2, jnp.float32),       # grouped, not depthwise
    (12, 6, jnp.float32),      # depth multiplier 2
    (5, 1, jnp.bfloat16),      # not float32
])
def test_what_onednn_does_not_cover_is_left_to_xla(features, groups, dtype):
  x = random((2, 7, 7, 6), 0).astype(dtype)
  fast = conv_module(('onednn',) * 3, features, (3, 3), 1, groups)
  reference = conv_module(('xla',) * 3, features, (3, 3), 1, groups)
  variables = jax.tree.map(lambda v: v.astype(dtype), reference.init(jax.random.PRNGKey(1), x))
  assert 'custom_call' not in jax.jit(fast.apply).lower(variables, x).as_text()
  assert_close(fast.apply(variables, x), reference.apply(variables, x), tol=0)


def test_onednn_conv_is_right_under_a_sharded_batch():
  """No sharding rule: XLA gathers the batch around the call, which is slow but exact."""
  mesh = Mesh(np.array(jax.devices()), ('data',))
  x = jax.device_put(random((2 * len(jax.devices()), 7, 7, 4), 0),
                     NamedSharding(mesh, PartitionSpec('data')))
  kernel = random((3, 3, 4, 5), 1)

  def kernel_gradient(conv):
    return jax.jit(jax.grad(lambda k: jnp.sum(jnp.sin(conv(x, k)))))(kernel)

  assert_close(kernel_gradient(lambda x, k: onednn.conv(x, k, (1, 1), ((1, 1), (1, 1)))),
               kernel_gradient(lambda x, k: lax.conv_general_dilated(
                   x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))))


@pytest.mark.long(seconds=10)
def test_xception_trains_the_same_with_onednn_convs():
  """The whole model: same logits, BN statistics and gradients as XLA's own operations."""
  fast = models.create_model('xception', num_classes=5, execution=ONEDNN,
                             **models.Xception.tiny_options)
  reference = fast.clone(execution=models.Execution.reference())
  variables = random_variables(reference, 71)
  x = jax.random.uniform(jax.random.PRNGKey(1), (BATCH, 71, 71, 3), jnp.float32, -1, 1)
  assert_close(train_gradients(fast, variables, x), train_gradients(reference, variables, x),
               tol=1e-4)


def test_auto_picks_onednn_on_one_cpu_device_only(monkeypatch):
  assert jax.local_device_count() == 8   # tests/conftest.py
  assert models.Execution().resolved('cpu').conv == 'xla'
  monkeypatch.setattr(jax, 'local_device_count', lambda: 1)
  resolved = models.Execution().resolved('cpu')
  assert (resolved.depthwise, resolved.pointwise, resolved.conv) == ('onednn',) * 3
  assert models.Execution(conv='xla').resolved('cpu').conv == 'xla'
  assert models.Execution().resolved('gpu').conv == 'xla'


@pytest.fixture
def without_onednn(monkeypatch):
  """This process as if `onednn-cpu-gomp` were not installed."""
  from importlib import metadata
  real = metadata.distribution

  def distribution(name):
    if name == onednn.LIBRARY:
      raise metadata.PackageNotFoundError(name)
    return real(name)

  for cached in (onednn.library_path, onednn.unavailable_reason, onednn._registered,
                 execution._warn_once):
    cached.cache_clear()
  monkeypatch.setattr(onednn.metadata, 'distribution', distribution)
  yield
  for cached in (onednn.library_path, onednn.unavailable_reason, onednn._registered):
    cached.cache_clear()


def test_without_onednn_auto_falls_back_with_a_warning(without_onednn, monkeypatch, caplog):
  monkeypatch.setattr(jax, 'local_device_count', lambda: 1)
  with caplog.at_level(logging.WARNING):
    resolved = models.Execution().resolved('cpu')
  assert (resolved.depthwise, resolved.pointwise, resolved.conv) == ('shifted', 'dot', 'xla')
  assert [r.getMessage() for r in caplog.records] == [
      "'auto' convs use XLA's forms, not oneDNN's: oneDNN convs need the onednn-cpu-gomp "
      f'package: {onednn.INSTALL}']


def test_asking_for_onednn_where_it_cannot_run_is_a_one_line_error(without_onednn):
  with pytest.raises(onednn.OneDNNUnavailable, match=rf'^oneDNN convs need the onednn-cpu-gomp '
                                                     rf'package: pip install .*2023\.2\.0$'):
    models.Execution(conv='onednn').conv_general_dilated()
  with pytest.raises(ValueError, match="runs on CPU only, not gpu; use 'auto'"):
    models.Execution(pointwise='onednn').resolved('gpu')


def test_a_missing_compiler_is_named(monkeypatch, tmp_path):
  monkeypatch.setenv('XCEPTION_JAX_CACHE', str(tmp_path))    # Nothing cached: it must compile.
  monkeypatch.delenv('CXX', raising=False)
  monkeypatch.setattr(onednn.shutil, 'which', lambda name: None)
  onednn.library_path.cache_clear()
  try:
    with pytest.raises(onednn.OneDNNUnavailable, match=r'need a C\+\+ compiler \(c\+\+, g\+\+ '
                                                       r'or \$CXX\); install one'):
      onednn.library_path()
  finally:
    onednn.library_path.cache_clear()


def test_a_compiler_that_does_not_run_is_named(monkeypatch, tmp_path):
  monkeypatch.setenv('XCEPTION_JAX_CACHE', str(tmp_path))
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-c++'))
  onednn.library_path.cache_clear()
  try:
    with pytest.raises(onednn.OneDNNUnavailable, match=r'^cannot run the C\+\+ compiler .*'
                                                       r'no-such-c\+\+ \(.*\); install one or '
                                                       r'point \$CXX at it$'):
      onednn.library_path()
    assert list((tmp_path / 'onednn').iterdir()) == []     # No partial file left behind.
  finally:
    onednn.library_path.cache_clear()


def test_the_library_is_built_once_and_reused(monkeypatch, tmp_path):
  monkeypatch.setenv('XCEPTION_JAX_CACHE', str(tmp_path))
  onednn.library_path.cache_clear()
  try:
    path = onednn.library_path()
    assert path.startswith(str(tmp_path / 'onednn')) and path.endswith('.so')
    assert [p.name for p in (tmp_path / 'onednn').iterdir()] == [path.rsplit('/', 1)[1]]
    onednn.library_path.cache_clear()
    monkeypatch.setattr(onednn.subprocess, 'run', None)   # A second build would fail.
    assert onednn.library_path() == path
  finally:
    onednn.library_path.cache_clear()
