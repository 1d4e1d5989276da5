"""Model zoo: `create_model(name, **kwargs)` returns a `flax.linen.Module`."""
from xception_jax.models.registry import (create_model, list_models, model_class, model_config,
                                          model_options, parse_options, register_model)
from xception_jax.models.inputs import Preprocessing
from xception_jax.models.bridge import to_nnx
from xception_jax.models.compiler import compiler_options, run_once_compiler_options
from xception_jax.models.execution import Execution
# Importing a model module registers its names.
from xception_jax.models.xception import Xception
from xception_jax.models.inception_v3 import InceptionV3
from xception_jax.models.inception_v4 import InceptionV4
from xception_jax.models.inception_resnet import InceptionResNetV1, InceptionResNetV2

__all__ = ['Execution', 'Preprocessing', 'compiler_options', 'create_model', 'list_models',
           'model_class', 'model_config', 'model_options', 'parse_options', 'register_model',
           'run_once_compiler_options', 'to_nnx',
           'Xception', 'InceptionV3', 'InceptionV4', 'InceptionResNetV1', 'InceptionResNetV2']
