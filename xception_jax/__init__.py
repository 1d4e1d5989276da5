"""Xception and the Inception family in JAX/Flax, with training on device meshes."""
__version__ = '0.1.0'
