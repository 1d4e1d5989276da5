"""Small utilities shared by the tests."""
import jax
import jax.numpy as jnp

from xception_jax.weights import tree


def param_count(model, image_size: int = 299) -> int:
  """Trainable parameters of `model`, counted without allocating them."""
  variables = tree.variable_template(model, image_size)
  return sum(x.size for x in jax.tree.leaves(variables['params']))


def init(model, image_size: int, batch: int = 2, seed: int = 0):
  """Real variables for `model` at `image_size`."""
  x = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
  return model.init(jax.random.PRNGKey(seed), x, train=False)
