"""`python -m xception_jax.report`: runs xception_jax/tools/report.py, where its flags are documented."""
import runpy

if __name__ == '__main__':
  runpy.run_module('xception_jax.tools.report', run_name='__main__', alter_sys=True)
