"""The XLA compiler options the jitted steps use: what each one changes in the compiled program."""
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import pytest

from xception_jax import models
from xception_jax.models import compiler, ops, registry
from xception_jax.weights import tree


def random(shape, seed):
  return jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)


def ynn_ops(compiled_text: str) -> set[str]:
  """The operations (by op_name) that XLA handed to its YNNPACK library."""
  return {line.split('op_name="')[1].split('"')[0].rsplit('/', 1)[-1]
          for line in compiled_text.splitlines()
          if '__ynn_fusion' in line and ' fusion(' in line and 'op_name="' in line}


def test_compiler_options_keep_convs_from_ynnpack_but_not_dots():
  x, kernel, pointwise = random((2, 33, 33, 16), 0), random((3, 3, 16, 32), 1), random(
      (1, 1, 32, 16), 2)
  def loss(x, kernel):
    y = lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.sum(ops.pointwise_dot(y, pointwise, (1, 1)) ** 2)
  step = jax.jit(jax.grad(loss, argnums=(0, 1)))
  default = ynn_ops(step.lower(x, kernel).compile().as_text())
  assert 'conv_general_dilated' in default and 'dot_general' in default
  fusions = {}
  for model in (None, 'inception_resnet_v2'):   # Its own fusion mode, tested too.
    text = step.lower(x, kernel).compile(models.compiler_options('cpu', model=model)).as_text()
    ours = ynn_ops(text)
    assert 'conv_general_dilated' not in ours and 'dot_general' in ours, model
    fusions[model] = text.count('__ynn_fusion')
  # YNNPACK's fused-dot mode takes elementwise work into its dot fusions: fewer of them.
  assert fusions['inception_resnet_v2'] < fusions[None], fusions


def training_temp_bytes(model, size: int):
  """XLA's temporary memory for the gradient of `model` at batch 2, by compiler options."""
  x = random((2, size, size, 3), 0)
  variables = tree.variable_template(model, size)
  def loss(params, batch_stats):
    logits, _ = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                            rngs={'dropout': jax.random.PRNGKey(1)}, mutable=['batch_stats'])
    return jnp.sum(logits)
  lowered = jax.jit(jax.grad(loss)).lower(variables['params'], variables['batch_stats'])
  return lambda options: lowered.compile(options).memory_analysis().temp_size_in_bytes


@pytest.mark.long(seconds=20)
def test_compiler_options_schedule_training_for_memory():
  """The memory-optimised scheduler takes effect as a compiler option (the older flag did not)."""
  temp_bytes = training_temp_bytes(
      models.create_model('xception', **models.Xception.tiny_options), 71)
  ours = models.compiler_options('cpu')
  without = {k: v for k, v in ours.items() if k != 'xla_cpu_scheduler_type'}
  assert temp_bytes(ours) < 0.8 * temp_bytes(without)


def test_inception_resnet_v2_options_schedule_training_for_concurrency():
  """Its per-model scheduler replaces the common one: more memory (and, measured, speed)."""
  model = models.create_model('inception_resnet_v2', **models.InceptionResNetV2.tiny_options)
  temp_bytes = training_temp_bytes(model, 75)
  ours = models.compiler_options('cpu', model=model)
  memory_optimised = {**ours, 'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}
  assert temp_bytes(ours) > 2 * temp_bytes(memory_optimised)


def test_compiler_options_follow_the_model_and_backend():
  common = models.compiler_options('cpu')
  assert models.compiler_options('cpu', model='xception') == common
  tiny = models.create_model('inception_resnet_v2', width_multiplier=0.25)
  irv2 = models.compiler_options('cpu', model=tiny)
  # A module and its registered name get the same options; another model's are its own.
  assert irv2 == models.compiler_options('cpu', model='inception_resnet_v2') != common
  assert set(irv2) == set(common)   # They replace the common options, one for one.
  assert models.compiler_options('tpu', model='inception_resnet_v2') == {}
  assert registry.model_name(models.model_class('inception_v4')) == 'inception_v4'
  assert registry.model_name(nn.Dense(3)) is None


def test_compiler_options_rejected_by_xla_are_dropped_with_a_warning(monkeypatch, caplog):
  monkeypatch.setitem(compiler.COMPILER_OPTIONS, 'cpu', {'xla_cpu_no_such_option': True,
                                                    'xla_cpu_enable_fast_math': False})
  compiler._checked_options.cache_clear()
  try:
    assert models.compiler_options('cpu') == {'xla_cpu_enable_fast_math': False}
  finally:
    compiler._checked_options.cache_clear()
  assert 'XLA rejected the compiler option xla_cpu_no_such_option=True' in caplog.text
