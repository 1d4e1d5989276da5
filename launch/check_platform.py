"""Checks an installed environment: python launch/check_platform.py cpu|cuda12|tpu.

Exits 0 printing what JAX sees when its devices are the platform's, else 1
with a one-line reason (install.sh runs it last, on every host).
"""
import sys

DEVICE_PLATFORM = {'cpu': 'cpu', 'cuda12': 'gpu', 'tpu': 'tpu'}


def check(platform: str) -> tuple[bool, str]:
  """(ok, one line): whether JAX's local devices are `platform`'s, and what it sees."""
  if platform not in DEVICE_PLATFORM:
    return False, f'unknown platform {platform!r}; choose {", ".join(DEVICE_PLATFORM)}'
  try:
    import jax
  except ImportError as e:
    return False, f'jax does not import ({e}); rerun launch/install.sh {platform}'
  try:
    devices = jax.local_devices()
  except RuntimeError as e:  # No backend of any kind initialised.
    return False, f'jax {jax.__version__} finds no devices ({str(e).splitlines()[0]})'
  found = sorted({d.platform for d in devices})
  seen = f'{len(devices)} {"/".join(found)} device(s) ({devices[0].device_kind})'
  if found != [DEVICE_PLATFORM[platform]]:
    return False, (f'expected {DEVICE_PLATFORM[platform]} devices for {platform}, jax '
                   f'{jax.__version__} sees {seen}: check the driver (GPU) or the TPU '
                   'runtime, or install the platform this host has')
  return True, f'jax {jax.__version__} sees {seen}'


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print('usage: python launch/check_platform.py cpu|cuda12|tpu', file=sys.stderr)
    return 2
  ok, line = check(argv[1])
  print(('ok: ' if ok else 'error: ') + line, file=sys.stdout if ok else sys.stderr)
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main(sys.argv))
