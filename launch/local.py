r"""Starts P training processes on this machine, joined like the hosts of a cluster.

  python launch/local.py --processes=2 --devices_per_process=2 -- \
      --config=configs/quickstart.py --workdir=runs/two_processes

Each process runs `python -m xception_jax.main` with the arguments after `--`
plus the jax.distributed settings (coordinator on 127.0.0.1). On CPU every
process gets `devices_per_process` host devices; with --platform=gpu each gets
one GPU. Output lines are prefixed with the process id. SIGTERM and SIGINT are
forwarded to every process (a preemption rehearsal). The exit status is the
first non-zero status of a process, else 0.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Sequence

from absl import app, flags

_PROCESSES = flags.DEFINE_integer('processes', 2, 'Number of processes.')
_DEVICES = flags.DEFINE_integer('devices_per_process', 1, 'Host devices per process (CPU).')
_PLATFORM = flags.DEFINE_enum('platform', 'cpu', ['cpu', 'gpu'], 'Device platform.')
_PORT = flags.DEFINE_integer('port', 0, 'Coordinator port; 0 picks a free one.')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_command(main_args: Sequence[str], index: int, count: int, port: int) -> list[str]:
  """The command line of process `index` of `count`."""
  return [sys.executable, '-m', 'xception_jax.main', *main_args,
          '--config.distributed.enabled=True',
          f'--config.distributed.coordinator_address=127.0.0.1:{port}',
          f'--config.distributed.num_processes={count}',
          f'--config.distributed.process_id={index}']


def process_environment(index: int, platform: str, devices: int) -> dict[str, str]:
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  if platform == 'cpu':
    env['JAX_PLATFORMS'] = 'cpu'
    flags_without_count = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                                   if 'xla_force_host_platform_device_count' not in f)
    env['XLA_FLAGS'] = f'{flags_without_count} --xla_force_host_platform_device_count={devices}'
  else:
    env['CUDA_VISIBLE_DEVICES'] = str(index)
  return env


def relay(index: int, stream) -> None:
  for line in stream:
    sys.stdout.write(f'[{index}] {line}')
    sys.stdout.flush()


def wait_all(children: list[subprocess.Popen], poll_seconds: float = 0.2) -> list[int]:
  """Waits for every process; once one fails, the others (stuck in collectives) are killed."""
  while any(child.poll() is None for child in children):
    if any(child.poll() not in (None, 0) for child in children):
      for child in children:
        if child.poll() is None:
          child.kill()
    time.sleep(poll_seconds)
  return [child.returncode for child in children]


def run(main_args: Sequence[str], processes: int, devices: int, platform: str = 'cpu',
        port: int = 0) -> int:
  """Runs the processes to completion; returns the launcher's exit status."""
  port = port or free_port()
  children = [subprocess.Popen(process_command(main_args, i, processes, port),
                               env=process_environment(i, platform, devices),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for i in range(processes)]

  def forward(signum, frame):
    del frame
    for child in children:
      if child.poll() is None:
        child.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  relays = [threading.Thread(target=relay, args=(i, c.stdout), daemon=True)
            for i, c in enumerate(children)]
  for thread in relays:
    thread.start()
  try:
    statuses = wait_all(children)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  for thread in relays:
    thread.join(timeout=5)
  return next((s for s in statuses if s != 0), 0)


def main(argv):
  sys.exit(run(argv[1:], _PROCESSES.value, _DEVICES.value, _PLATFORM.value, _PORT.value))


if __name__ == '__main__':
  app.run(main)
