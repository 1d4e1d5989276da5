"""Our models equal timm's carrying the same random weights (needs torch and timm).

Skipped where timm does not import: install requirements-reference.txt to run it.
"""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# torch imports triton when present; triton (unused on CPU) segfaults when it loads after
# TensorFlow in one process, which other test modules import first. torch runs without it.
sys.modules.setdefault('triton', None)
timm = pytest.importorskip('timm')
torch = pytest.importorskip('torch')

from xception_jax import models, weights  # noqa: E402
from xception_jax.models.inception_v3 import AuxHead  # noqa: E402
from xception_jax.models.layers import conv_and_norm_defs  # noqa: E402

TOLERANCE = 1e-4  # Max abs difference allowed on float32 logits.
TIMM_NAMES = {'xception': 'legacy_xception', 'inception_v3': 'inception_v3',
              'inception_v4': 'inception_v4', 'inception_resnet_v2': 'inception_resnet_v2'}


def randomize(model, seed):
  """Variance-preserving convs and dense weights, random BN γ, β and statistics (eval mode)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.Conv2d):
        fan_in = module.weight[0].numel()
        module.weight.copy_(torch.randn(module.weight.shape, generator=generator) *
                            fan_in ** -0.5)
      elif isinstance(module, torch.nn.Linear):
        module.weight.copy_(torch.randn(module.weight.shape, generator=generator) *
                            module.in_features ** -0.5)
      elif isinstance(module, torch.nn.BatchNorm2d):
        n = module.num_features
        module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
        module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
        module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
        module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
  return model.eval()


def state_dict(model):
  return {k: v.numpy() for k, v in model.state_dict().items()}


def images(size, seed=1, batch=2):
  return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype('float32')


def run_timm(model, x):
  with torch.no_grad():
    return model(torch.from_numpy(x).permute(0, 3, 1, 2))


@pytest.fixture(scope='module', params=list(TIMM_NAMES))
def reference(request):
  name = request.param
  return name, randomize(timm.create_model(TIMM_NAMES[name]), seed=0)


def test_logits_equal_timm_at_299_and_150(reference):
  # 150 gives even maps where TF SAME and PyTorch padding differ (Xception's pools: 74 → 37).
  name, timm_model = reference
  variables = weights.from_timm(name, state_dict(timm_model))
  apply = jax.jit(weights.timm_model(name).apply)
  for size in (299, 150):
    x = images(size)
    expected = run_timm(timm_model, x).numpy()
    assert np.abs(expected).max() > 0.1  # Non-trivial logits.
    difference = np.abs(np.asarray(apply(variables, x)) - expected).max()
    print(f'{name} at {size}: max abs difference {difference:.2e}')
    assert difference < TOLERANCE
  if name in ('xception', 'inception_v3'):  # Their timm options change outputs: they matter.
    plain = jax.jit(models.create_model(name, bn_scale=True).apply)
    assert np.abs(np.asarray(plain(variables, x)) - expected).max() > 1e-3


def test_inception_v3_auxiliary_logits_equal_timm():
  timm_model = randomize(timm.create_model('inception_v3', aux_logits=True), seed=1)
  sd = state_dict(timm_model)
  assert 'aux' not in weights.from_timm('inception_v3', sd)['params']  # Skipped, as timm does.
  variables = weights.from_timm('inception_v3', sd, aux_logits=True)
  model = weights.timm_model('inception_v3', aux_logits=True, dropout_rate=0.0)
  x = images(299, seed=3)
  # Evaluation: timm returns both logits; ours computes the auxiliary head only in training,
  # so run our head on our mixed 6e map.
  expected_logits, expected_aux = (t.numpy() for t in run_timm(timm_model, x))
  logits, features = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(variables, x)
  conv, norm = conv_and_norm_defs(train=False, dtype=jnp.float32, param_dtype=jnp.float32,
                                  bn_momentum=0.99, bn_epsilon=1e-3, bn_scale=True,
                                  execution=models.Execution())
  aux = AuxHead(1000, conv, norm).apply({c: variables[c]['aux'] for c in variables},
                                        features['mixed_6'])
  for label, ours, expected in (('logits', logits, expected_logits),
                                 ('auxiliary logits', aux, expected_aux)):
    difference = np.abs(np.asarray(ours) - expected).max()
    print(f'inception_v3 {label} at 299: max abs difference {difference:.2e}')
    assert difference < TOLERANCE
  # Training: both use batch statistics. Two images' statistics amplify float32 rounding
  # (timm's float32 output differs from its own float64 by ~1e-4, ~1e-3 on the aux logits).
  expected = [t.detach().numpy() for t in run_timm(timm_model.train(), x)]
  outputs, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, x)
  for label, ours, expected in zip(('logits', 'auxiliary logits'), outputs, expected):
    difference = np.abs(np.asarray(ours) - expected).max()
    print(f'inception_v3 {label}, training mode, at 299: max abs difference {difference:.2e}')
    assert difference < 2e-3


def test_safetensors_file_without_torch_and_the_convert_command(tmp_path):
  from safetensors.numpy import save_file
  timm_model = randomize(timm.create_model('legacy_xception', num_classes=10), seed=2)
  path = tmp_path / 'model.safetensors'
  save_file(state_dict(timm_model), path)
  run = lambda *args: subprocess.run([sys.executable, *args], capture_output=True, text=True,
                                     timeout=300)
  result = run('-c', 'import sys; from xception_jax import weights; '
                     f'v = weights.from_timm("xception", {str(path)!r}); '
                     'assert "torch" not in sys.modules, "imported torch"; '
                     'print(v["params"]["head"]["predictions"]["kernel"].shape)')
  assert result.returncode == 0, result.stderr
  assert '(2048, 10)' in result.stdout
  result = run('-m', 'xception_jax.convert', '--source=timm', '--model=xception',
               f'--input={path}', f'--output={tmp_path}/ckpt')
  assert result.returncode == 0, result.stderr
  assert f'Wrote {20_806_952 + 2048 * 10 + 10:,} trainable parameters' in result.stdout
  restored = weights.load_variables(tmp_path / 'ckpt')
  x = images(99)
  ours = weights.timm_model('xception', num_classes=10).apply(restored, x)
  difference = np.abs(np.asarray(ours) - run_timm(timm_model, x).numpy()).max()
  print(f'xception (10 classes) from a safetensors checkpoint at 99: {difference:.2e}')
  assert difference < TOLERANCE


def test_errors_name_the_timm_tensors():
  sd = state_dict(randomize(timm.create_model('inception_v4', num_classes=10), seed=4))
  del sd['features.6.branch1.1.bn.running_var']
  sd['features.6.extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=r'missing in timm inception_v4: batch_stats/inception_a_1/'
                                       r'branch1_1/bn/var \(timm features\.6\.branch1\.1\.bn\.'
                                       r'running_var\) \| not in the model: timm features\.6\.'
                                       r'extra\.weight'):
    weights.from_timm('inception_v4', sd)
  del sd['features.6.extra.weight']
  sd['features.6.branch1.1.bn.running_var'] = np.ones(96, np.float32)
  with pytest.raises(ValueError, match=r'params/head/predictions/bias \(timm last_linear\.bias\) '
                                       r'\(10,\) vs model \(7,\)'):
    weights.from_timm('inception_v4', sd, num_classes=7)
  with pytest.raises(ValueError, match=r'not in the model: .*params/conv_1a/bn/scale '
                                       r'\(timm features\.0\.bn\.weight\)'):
    weights.from_timm('inception_v4', sd, bn_scale=False)
  backbone = weights.from_timm('inception_v4', sd, include_top=False)  # Skips the classifier.
  assert 'head' not in backbone['params']
  with pytest.raises(ValueError, match=r'expected a \.safetensors file'):
    weights.from_timm('inception_v4', __file__)
  with pytest.raises(ValueError, match="No timm import for 'inception_resnet_v1'"):
    weights.timm_model('inception_resnet_v1')
