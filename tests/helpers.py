"""Small utilities shared by the tests."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from xception_jax.weights import tree

# Trainable parameters at full size and 1,000 classes, as the references count them:
# the Xception paper's Table 3 (= Keras = timm), Keras' InceptionV3 and
# InceptionResNetV2, timm's inception_v4, and Inception-ResNet-v1 computed from its
# paper's figures (test_inception.py does the sum).
REFERENCE_PARAMETER_COUNTS = {'xception': 22_855_952, 'inception_v3': 23_817_352,
                              'inception_v4': 42_679_816, 'inception_resnet_v1': 22_742_808,
                              'inception_resnet_v2': 55_813_192}


def param_count(model, image_size: int = 299) -> int:
  """Trainable parameters of `model`, counted without allocating them."""
  variables = tree.variable_template(model, image_size)
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def variable_shapes(model, image_size=None):
  """The shapes of `model`'s variables, as a tree like its variables, without allocating them."""
  return jax.tree.map(jnp.shape, tree.variable_template(model, image_size))


def init(model, image_size: int, batch: int = 2, seed: int = 0):
  """Real variables for `model` at `image_size`, made by its initialisers in one jitted
  program (op by op, XLA compiles every initialiser of a new shape on its own)."""
  x = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
  return jax.jit(lambda key, x: model.init(key, x, train=False))(jax.random.PRNGKey(seed), x)


def initial_state(model, tx, image_size: int):
  """`model`'s step-0 TrainState under `tx` (host arrays), initialised by one jitted program:
  op by op, XLA compiles every initialiser of a new shape on its own (10 s for the tiny
  Xception)."""
  from xception_jax.trainer.state import create_train_state
  return jax.device_get(jax.jit(functools.partial(create_train_state, model, tx, image_size))(
      jax.random.PRNGKey(0)))


def random_variables(model, image_size=None, seed: int = 0):
  """Random variables for `model` made with numpy: no initialiser for XLA to compile.

  He-normal kernels, small random biases, and BN statistics, γ and β away
  from their defaults (defaults would hide mistakes).
  """
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    shape, name = leaf.shape, path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(shape[:-1]))
      value = rng.normal(0, np.sqrt(2 / fan_in), shape)
    elif name in ('scale', 'var'):
      value = rng.uniform(0.5, 1.5, shape)
    else:  # bias, mean
      value = rng.normal(0, 0.1, shape)
    return value.astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(make, tree.variable_template(model, image_size))


def train_gradients(model, variables, x, seed: int = 2):
  """Gradients of Σ sin(logits) in training mode w.r.t. the parameters, and (logits, state)."""
  def loss(params):
    logits, state = model.apply({**variables, 'params': params}, x, train=True,
                                rngs={'dropout': jax.random.PRNGKey(seed)},
                                mutable=['batch_stats'])
    return jnp.sum(jnp.sin(logits)), (logits, state)
  return jax.jit(jax.grad(loss, has_aux=True))(variables['params'])


def assert_trees_close(got, want, tol=1e-5):
  """Leaf by leaf: same shape and dtype, values within `tol` relative to each leaf's scale."""
  got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(got_leaves) == len(want_leaves)
  for g, w in zip(got_leaves, want_leaves):
    assert g.shape == w.shape and g.dtype == w.dtype
    np.testing.assert_allclose(g, w, rtol=tol, atol=tol * float(np.abs(w).max()))


def train_step(model, variables, x, labels, aux_weight=0.4):
  """(loss, (outputs, BN state)) and gradients of one jitted cross-entropy training step."""
  def loss_fn(params):
    out, state = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                             train=True, rngs={'dropout': jax.random.PRNGKey(2)},
                             mutable=['batch_stats'])
    logits, aux = out if isinstance(out, tuple) else (out, None)
    xent = lambda z: -jnp.take_along_axis(jax.nn.log_softmax(z), labels[:, None], 1).mean()
    return xent(logits) + (0.0 if aux is None else aux_weight * xent(aux)), (out, state)
  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables['params'])


def check_training_step(variables, loss, state, grads):
  """What every model's training step must give: a finite loss, a finite non-zero gradient
  for every parameter, and every BN moving statistic updated."""
  assert np.isfinite(float(loss))
  # In numpy: jnp.linalg.norm would compile a program for every parameter shape.
  norms = {jax.tree_util.keystr(path): float(np.linalg.norm(np.asarray(g, np.float64)))
           for path, g in jax.tree_util.tree_leaves_with_path(grads)}
  assert all(np.isfinite(list(norms.values()))), norms
  assert min(norms.values()) > 0, [k for k, v in norms.items() if v == 0]
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), state['batch_stats'],
                         variables['batch_stats'])
  assert all(jax.tree.leaves(changed))


def tiny_config(**overrides):
  """The trainer's defaults with a 0.25-width, one-middle-module Xception at 71 px, batch 8."""
  from xception_jax import models
  from xception_jax.trainer.config_defaults import base_config
  c = base_config()
  c.model_kwargs.update(models.Xception.tiny_options)
  c.image_size = 71
  c.batch_size = 8
  c.learning_rate = 0.01
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.async_checkpoints = False
  c.shuffle_buffer = 64
  c.update(overrides)
  return c


def timm_state_dict(name, model, variables) -> dict:
  """Our timm-configured `model`'s `variables` as a timm state dict (PyTorch layouts, numpy):
  a file in timm's format without torch, for the import and download tests."""
  from flax import traverse_util
  from xception_jax.weights import timm_import
  flat = traverse_util.flatten_dict(variables)
  state = {}
  for ours, key, _ in timm_import.tensor_table(name, model):
    value = np.asarray(flat[ours])
    value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T if value.ndim == 2 \
        else value
    state[key] = np.ascontiguousarray(value)  # safetensors writes the buffer as it lies.
  return state
