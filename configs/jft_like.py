r"""Xception on a JFT-like multi-label data set: the paper's JFT recipe (§4.1–4.3, Table 2, Figs. 7–8).

From the paper: RMSprop with momentum 0.9, learning rate 0.001 decayed ×0.9
every 3,000,000 examples, no dropout, the ImageNet weight decay (1e-5;
4e-5 for Inception-V3), Polyak averaging, no auxiliary head; multi-label
targets (sigmoid cross-entropy on multi-hot labels) and MAP@100 on the
evaluation split, optionally class-weighted as FastEval14k
(--config.class_weights=weights.json, {class name: weight}; definitions in
xception_jax/multilabel.py).

Not stated by the paper, chosen here: RMSprop ε = 1e-10 inside the square
root (TF RMSPropOptimizer's default; with the ImageNet recipe's ε = 1.0 a
rate of 0.001 would be plain momentum SGD at 0.001), decay 0.9; global batch
2,048 as configs/imagenet.py, rate not rescaled (RMSprop's step does not
scale with the batch); 299 px and Inception preprocessing; an evaluation at
every decay (1,465 steps). Duration: the paper's JFT runs took over a month
and had not converged; set num_epochs or total_steps for your data.

JFT is not public: point --config.dataset at your data, 'multilabel:PATH'
(PATH/<split>.jsonl files) or a TFDS data set with a multi-label feature
(--config.label_key, e.g. --config.dataset=voc/2007 --config.label_key=labels
--config.eval_split=test).

Variants (comma-separated): 'fc' adds the two 4096-unit fully-connected
layers before the classifier (Fig. 8; 0.25 × 4096 in quick/local runs);
'inception_v3' trains Inception-V3 under the same recipe; 'quick' (digit
grids, minutes on CPU) or 'local' (seconds) shrink the run onto the bundled
multi-label digits.

  python -m xception_jax.main --config=configs/jft_like.py:fc --workdir=runs/jft_fc \
      --config.dataset=multilabel:/data/jft --config.class_weights=/data/fasteval14k_weights.json
"""
from xception_jax.trainer.config_defaults import base_config, local_variant, quick_variant, split_variant

FC_LAYERS = (4096, 4096)
SMALL_FC_LAYERS = (1024, 1024)  # The tiny models' width multiplier (0.25) applied to 4096.


def get_config(variant: str = ''):
  words, size = split_variant(variant, ('fc', 'inception_v3'))
  c = base_config()
  c.model = 'inception_v3' if 'inception_v3' in words else 'xception'
  c.model_kwargs.dropout_rate = 0.0
  if c.model == 'inception_v3':
    c.model_kwargs.aux_logits = False
  c.weight_decay = 4e-5 if c.model == 'inception_v3' else 1e-5
  if 'fc' in words:
    c.model_kwargs.fc_layers = SMALL_FC_LAYERS if size else FC_LAYERS
  c.dataset = ''
  c.label_key = 'label'
  c.train_split, c.eval_split = 'train', 'validation'
  c.image_size = 299
  c.batch_size = 2048
  c.num_epochs = 1.0
  c.optimizer = 'rmsprop'
  c.momentum = 0.9
  c.rmsprop_decay = 0.9
  c.rmsprop_epsilon = 1e-10
  c.learning_rate = 0.001
  c.reference_batch_size = 0
  c.lr_decay_rate = 0.9
  c.lr_decay_examples = 3_000_000
  c.label_smoothing = 0.0
  c.ema_decay = 0.9999
  c.batch_norm = 'device'
  c.map_top_k = 100
  c.log_every_steps = 100
  c.eval_every_steps = 1465         # Every decay: 3,000,000 / 2,048 steps.
  c.checkpoint_every_steps = 1000
  if size == 'quick':
    return quick_variant(c, dataset='digits_multilabel')
  if size == 'local':
    c = local_variant(c)
    c.dataset = 'digits_multilabel'
  return c
