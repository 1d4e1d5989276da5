"""Command-line tools around the models and runs (each also `python -m xception_jax.NAME`)."""
