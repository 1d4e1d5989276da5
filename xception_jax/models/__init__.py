"""Model zoo: `create_model(name, **kwargs)` returns a `flax.linen.Module`."""
from xception_jax.models.registry import (create_model, list_models, model_class, parse_options,
                                          register_model)
from xception_jax.models import xception  # noqa: F401  (registers 'xception')
from xception_jax.models.xception import Xception

__all__ = ['create_model', 'list_models', 'model_class', 'parse_options', 'register_model',
           'Xception']
