"""Weight import (Keras, timm) and converted-weight checkpoints."""
from xception_jax.weights.checkpoint import load_variables, save_variables
from xception_jax.weights.keras_import import from_keras

__all__ = ['from_keras', 'load_variables', 'save_variables']
