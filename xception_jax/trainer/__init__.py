"""The training system: `train.train_and_evaluate(config, workdir)` and what it is made of.

Model-independent: any registered model trains with it. Importing this package
imports nothing else (the main job reads `host_memory` before JAX loads).
"""
