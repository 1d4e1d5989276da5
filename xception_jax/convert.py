"""`python -m xception_jax.convert`: runs xception_jax/tools/convert.py, where its flags are documented."""
import runpy

if __name__ == '__main__':
  runpy.run_module('xception_jax.tools.convert', run_name='__main__', alter_sys=True)
