"""`python -m xception_jax.sweep`: runs xception_jax/tools/sweep.py, where its flags are documented."""
import runpy

if __name__ == '__main__':
  runpy.run_module('xception_jax.tools.sweep', run_name='__main__', alter_sys=True)
