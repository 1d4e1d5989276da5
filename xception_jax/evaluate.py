"""`python -m xception_jax.evaluate`: runs xception_jax/tools/evaluate.py, where its flags are documented."""
import runpy

if __name__ == '__main__':
  runpy.run_module('xception_jax.tools.evaluate', run_name='__main__', alter_sys=True)
