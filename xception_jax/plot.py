"""`python -m xception_jax.plot`: runs xception_jax/tools/plot.py, where its flags are documented."""
import runpy

if __name__ == '__main__':
  runpy.run_module('xception_jax.tools.plot', run_name='__main__', alter_sys=True)
