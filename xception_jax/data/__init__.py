"""Input pipelines: sources of labelled images, Inception preprocessing, batching."""
import sys


def _import_tensorflow_without_keras() -> None:
  """Imports TensorFlow, skipping the eager import of Keras its `__init__` makes.

  With Keras 3 installed (the equality tests and converters need it), `import tensorflow`
  loads `keras.src.optimizers` "so that load-time registrations happen", which pulls in all
  of Keras and scikit-learn: 1.5 s of every training process's start, for SavedModel
  registrations this package never uses. A `None` entry in `sys.modules` makes that one
  import fail the way TensorFlow expects when Keras is absent; it is removed at once, so
  `import keras` later works as usual.
  """
  if 'tensorflow' in sys.modules:
    return
  blocked = 'keras.src.optimizers'
  placed = blocked not in sys.modules
  if placed:
    sys.modules[blocked] = None
  try:
    import tensorflow  # noqa: F401
  finally:
    if placed:
      del sys.modules[blocked]


_import_tensorflow_without_keras()
