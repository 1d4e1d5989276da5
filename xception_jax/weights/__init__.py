"""Weight import (Keras, timm) and converted-weight checkpoints."""
from xception_jax.weights.checkpoint import load_variables, save_variables
from xception_jax.weights.keras_import import from_keras
from xception_jax.weights.timm_import import from_timm, timm_model

__all__ = ['from_keras', 'from_timm', 'load_variables', 'save_variables', 'timm_model']
