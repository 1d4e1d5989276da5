"""Small utilities shared by the tests."""
import jax
import jax.numpy as jnp
import numpy as np

from xception_jax.weights import tree


def param_count(model, image_size: int = 299) -> int:
  """Trainable parameters of `model`, counted without allocating them."""
  variables = tree.variable_template(model, image_size)
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def variable_shapes(model, image_size=None):
  """The shapes of `model`'s variables, as a tree like its variables, without allocating them."""
  return jax.tree.map(jnp.shape, tree.variable_template(model, image_size))


def init(model, image_size: int, batch: int = 2, seed: int = 0):
  """Real variables for `model` at `image_size`."""
  x = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
  return model.init(jax.random.PRNGKey(seed), x, train=False)


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
