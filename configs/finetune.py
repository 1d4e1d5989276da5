r"""Fine-tuning published or converted weights on your own images (transfer learning).

  python -m xception_jax.main --config=configs/finetune.py --workdir=runs/flowers \
      --config.dataset=folder:/data/flowers --config.init_from=xception.keras_in1k_notop

`dataset` holds PATH/train/<class>/<images> and PATH/validation/<class>/<images>.
`init_from` is a pretrained tag (`python -m xception_jax.convert --list`) or a
converted-weights directory; the model and its options come from it
(`model=''`), with a fresh classifier for the data's classes.

Recipe: SGD with momentum 0.9, learning rate 0.01 at a batch of 32 (scaled
linearly with the batch), one epoch of linear warm-up then cosine decay to 0
over 10 epochs, the backbone at 0.1× the classifier's learning rate, weight
decay 1e-5, label smoothing 0.1, Polyak averaging 0.999, batch-norm statistics
over the global batch, milder crops than ImageNet's and no colour distortion.
Any input size from the model's minimum works (`--config.image_size`).

Variants: `:head` trains the classifier alone (the backbone frozen, its batch
norms in inference mode: Keras's `trainable=False`); `:local` is a
seconds-long smoke run of the recipe on the bundled digits, from scratch.
"""
from xception_jax.trainer import config_defaults


def get_config(variant: str = ''):
  words, size = config_defaults.split_variant(variant, ('head',))
  c = config_defaults.base_config()
  c.model = ''
  c.init_from = 'xception.keras_in1k_notop'
  c.dataset = ''
  c.train_split, c.eval_split = 'train', 'validation'
  c.image_size = 299
  c.augment.area_range = (0.25, 1.0)
  c.augment.min_object_covered = 0.25
  c.augment.color_distortion = None
  c.batch_size = 32
  c.num_epochs = 10
  c.optimizer = 'sgd'
  c.momentum = 0.9
  c.learning_rate = 0.01
  c.reference_batch_size = 32
  c.lr_schedule = 'cosine'
  c.warmup_epochs = 1
  c.lr_multipliers = 'backbone=0.1'
  c.weight_decay = 1e-5
  c.label_smoothing = 0.1
  c.ema_decay = 0.999
  c.batch_norm = 'global'
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  if 'head' in words:
    c.freeze = 'backbone'
    c.lr_multipliers = ''
  if size == 'local':
    c.model, c.init_from = 'xception', ''
    c = config_defaults.local_variant(c)
  elif size:
    raise ValueError(f"configs/finetune.py has no '{size}' variant; choose '', 'head', "
                     "'local' or 'head,local'.")
  return c
