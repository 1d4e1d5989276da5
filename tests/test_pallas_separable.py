"""The fused depthwise + pointwise Pallas kernel (a trial that lost to XLA on the GPU): values on CPU, GPU lowering."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import pallas_separable as ps


@pytest.mark.parametrize('shape, features, blocks', [
    ((2, 7, 7, 20), 24, (16, 16, 16)),      # channels and features not whole blocks
    ((1, 10, 10, 48), 40, (32, 16, 32)),
    ((3, 5, 6, 8), 130, (16, 16, 64)),      # H ≠ W; more than two feature blocks
], ids=['7px', '10px', '5x6px'])
def test_fused_separable_conv_equals_xlas_two_convs(shape, features, blocks):
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(keys[0], shape)
  dw = jax.random.normal(keys[1], (3, 3, 1, shape[-1]))
  pw = jax.random.normal(keys[2], (1, 1, shape[-1], features))
  fused = ps.fused_separable_conv(x, dw, pw, block_m=blocks[0], block_k=blocks[1],
                                  block_f=blocks[2], interpret=True)
  reference = ps.xla_separable_conv(x, dw, pw)
  assert fused.shape == reference.shape
  np.testing.assert_allclose(fused, reference, rtol=1e-5, atol=1e-4 * float(abs(reference).max()))


def test_fused_separable_conv_rounds_the_depthwise_output_like_xla_in_bfloat16():
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  x, dw, pw = (jax.random.normal(k, s).astype(jnp.bfloat16) for k, s in
               zip(keys, [(2, 9, 9, 32), (3, 3, 1, 32), (1, 1, 32, 48)]))
  fused = ps.fused_separable_conv(x, dw, pw, block_m=32, block_k=16, block_f=16, interpret=True)
  exact = ps.xla_separable_conv(*(a.astype(jnp.float32) for a in (x, dw, pw)))
  assert fused.dtype == jnp.bfloat16
  error = jnp.linalg.norm(fused.astype(jnp.float32) - exact) / jnp.linalg.norm(exact)
  assert 1e-4 < float(error) < 1e-2    # bfloat16 rounding, not a wrong result


def test_fused_separable_conv_lowers_to_triton_at_every_xception_shape():
  """Pallas's Triton lowering rejects arrays of other than power-of-two sizes; caught here."""
  fused = jax.jit(ps.fused_separable_conv)
  for size, c, features, _ in ps.XCEPTION_SEPARABLE:
    args = [jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in
            [(2, size, size, c), (3, 3, 1, c), (1, 1, c, features)]]
    text = fused.trace(*args).lower(lowering_platforms=('cuda',)).as_text()
    assert re.search(r'custom_call @"?__gpu\$xla\.gpu\.triton', text), (size, c, features)


def test_benchmark_reports_every_block_configuration(monkeypatch, capsys):
  """One row per shape and configuration, whole op and kernel alone; a failing one is reported."""
  monkeypatch.setattr(ps, 'XCEPTION_SEPARABLE', ((7, 20, 24, 2), (5, 8, 40, 1)))
  ps.main(['--batch=2', '--dtype=float32', '--repeats=1', '--blocks=16,16,16',
           '--blocks=16,0,16', '--blocks=32,16,64,8'])
  rows = [line.split(' | ') for line in capsys.readouterr().out.splitlines()
          if re.match(r'\| \d+, ', line)]
  assert [(row[0], row[1]) for row in rows] == [
      ('| 16, 16, 16, 4', '7'), ('| 16, 16, 16, 4', '5'),
      ('| 16, 16, 16, 4', 'all, weighted by count'),
      ('| 16, 0, 16, 4', 'failed: ZeroDivisionError: integer division or modulo by zero |||||||||'),
      ('| 32, 16, 64, 8', '7'), ('| 32, 16, 64, 8', '5'),
      ('| 32, 16, 64, 8', 'all, weighted by count')]
  for row in rows:
    if row[1] in ('7', '5'):
      assert float(row[-1].strip(' |')) < 1e-5    # float32: the kernel equals XLA's two convs
