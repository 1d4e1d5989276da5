"""`python -m xception_jax.predict`: runs xception_jax/tools/predict.py, where its flags are documented."""
import runpy

if __name__ == '__main__':
  runpy.run_module('xception_jax.tools.predict', run_name='__main__', alter_sys=True)
