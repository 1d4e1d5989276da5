"""Every experiment config loads, and its tiny local variant trains end to end."""
from pathlib import Path

import pytest

from xception_jax.trainer import optim, train
from xception_jax.trainer.config_defaults import load_config

CONFIGS = sorted(Path(__file__).parent.parent.glob('configs/*.py'))


def load(path, *args):
  return load_config(f'{path}:{args[0]}' if args else path)


def test_imagenet_config_is_the_papers_recipe():
  c = load(Path('configs/imagenet.py'))
  assert (c.model, c.optimizer, c.momentum, c.weight_decay) == ('xception', 'sgd', 0.9, 1e-5)
  assert (c.lr_decay_rate, c.lr_decay_epochs, c.image_size) == (0.94, 2, 299)
  assert c.model_kwargs.dropout_rate == 0.5 and c.ema_decay == 0.9999
  assert optim.peak_learning_rate(c) == pytest.approx(0.045 * 2048 / 1920)


LOCAL = [p for p in CONFIGS if 'local' in p.read_text()]


def test_every_config_has_a_local_variant():
  assert {p.stem for p in CONFIGS} - {p.stem for p in LOCAL} == {'quickstart'}


@pytest.mark.parametrize('path', LOCAL, ids=lambda p: p.stem)
def test_local_variant_builds_its_model_and_state(path, digits_data_dir):
  config = load(path, 'local')
  config.data_dir = digits_data_dir
  setup = train.Setup(config)
  state = setup.abstract_state()  # Shapes only: the model, optimizer and EMA all fit.
  assert state.params.keys() == state.ema_params.keys()
  assert setup.model.__class__.__name__.lower().startswith(config.model.split('_')[0])


@pytest.mark.long(seconds=32)
def test_local_variant_trains(tmp_path, digits_data_dir):
  config = load(Path('configs/imagenet.py'), 'local')
  config.data_dir = digits_data_dir
  config.async_checkpoints = False
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['count'] == 355  # The digits test split, every example once.


def test_inception_configs_use_the_papers_recipes():
  v3 = load(Path('configs/inception_v3.py'))
  xception = load(Path('configs/imagenet.py'))
  assert v3.weight_decay == 4e-5 and not v3.model_kwargs.aux_logits
  for key in ('optimizer', 'learning_rate', 'lr_decay_rate', 'lr_decay_epochs', 'batch_size',
              'ema_decay', 'image_size'):
    assert v3[key] == xception[key], key
  v4 = load(Path('configs/inception_v4.py'))
  assert (v4.optimizer, v4.rmsprop_decay, v4.rmsprop_epsilon, v4.momentum) == \
      ('rmsprop', 0.9, 1.0, 0.9)
  assert optim.peak_learning_rate(v4) == pytest.approx(0.045 * 1024 / 640)


def differences(a, b) -> dict:
  """{field path: (a's value, b's value)} where two configs differ."""
  flat = lambda c: dict(_flatten(c.to_dict()))
  fa, fb = flat(a), flat(b)
  return {k: (fa.get(k), fb.get(k)) for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def _flatten(d, prefix=''):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flatten(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}', v


@pytest.mark.parametrize('variant, switch', [
    ('xception', {}),
    ('no_residual', {'model_kwargs.residual': (None, False)}),
    ('relu', {'model_kwargs.intermediate_activation': (None, 'relu')}),
    ('elu', {'model_kwargs.intermediate_activation': (None, 'elu')}),
    ('segments_1', {'model_kwargs.channel_segments': (None, 1)}),
    ('segments_8', {'model_kwargs.channel_segments': (None, 8)}),
])
def test_each_ablation_is_one_documented_switch_on_the_imagenet_recipe(variant, switch):
  assert differences(load(Path('configs/imagenet.py')),
                     load(Path('configs/ablations.py'), variant)) == switch
  assert variant in Path('configs/ablations.py').read_text()


def test_ablation_quick_runs_share_everything_but_the_model():
  quick = {v: load(Path('configs/ablations.py'), f'{v},quick')
           for v in ('xception', 'no_residual', 'inception_v3')}
  assert set(differences(quick['xception'], quick['no_residual'])) == {'model_kwargs.residual'}
  assert set(differences(quick['xception'], quick['inception_v3'])) == {
      'model', 'model_kwargs.middle_flow_repeats', 'model_kwargs.aux_logits',
      'model_kwargs.dropout_rate', 'weight_decay'}
  assert differences(load(Path('configs/ablations.py'), 'inception_v3'),
                     load(Path('configs/inception_v3.py'))) == {}
  c = quick['xception']
  assert (c.dataset, c.image_size, c.batch_size, c.eval_every_steps) == ('digits', 75, 32, 45)
  with pytest.raises(ValueError, match="Unknown config variant 'xception,fast'"):
    load(Path('configs/ablations.py'), 'xception,fast')


def test_jft_like_config_is_the_papers_jft_recipe():
  c = load(Path('configs/jft_like.py'))
  assert (c.optimizer, c.momentum, c.learning_rate) == ('rmsprop', 0.9, 0.001)
  assert (c.lr_decay_rate, c.lr_decay_examples, c.reference_batch_size) == (0.9, 3_000_000, 0)
  assert optim.steps_per_decay(c, steps_per_epoch=1) == round(3_000_000 / 2048)
  assert c.model_kwargs.dropout_rate == 0.0 and c.weight_decay == 1e-5 and c.map_top_k == 100
  assert differences(c, load(Path('configs/jft_like.py'), 'fc')) == {
      'model_kwargs.fc_layers': (None, (4096, 4096))}
  v3 = load(Path('configs/jft_like.py'), 'inception_v3,fc')
  assert (v3.model, v3.weight_decay, v3.model_kwargs.fc_layers) == \
      ('inception_v3', 4e-5, (4096, 4096))
  quick = load(Path('configs/jft_like.py'), 'fc,quick')
  assert (quick.dataset, quick.model_kwargs.fc_layers) == ('digits_multilabel', (1024, 1024))
