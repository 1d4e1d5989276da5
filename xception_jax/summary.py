"""`python -m xception_jax.summary`: runs xception_jax/tools/summary.py, where its flags are documented."""
import runpy

if __name__ == '__main__':
  runpy.run_module('xception_jax.tools.summary', run_name='__main__', alter_sys=True)
