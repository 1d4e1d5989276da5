"""Metrics to a JSON-lines file, TensorBoard and the console (process 0 only)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping

METRICS_FILE = 'metrics.jsonl'


class MetricWriter:
  """Writes scalar metrics under a workdir: `metrics.jsonl` and `tensorboard/`.

  A resumed run appends; a step logged twice (after a restart) appears twice,
  and readers keep the last record of each step.
  """

  def __init__(self, workdir: str | Path, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    import tensorflow as tf
    self._tf = tf
    self.path = Path(workdir) / METRICS_FILE
    self._file = open(self.path, 'a', encoding='utf-8')
    self._tensorboard = tf.summary.create_file_writer(str(Path(workdir) / 'tensorboard'))

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), **{k: float(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    with self._tensorboard.as_default(step=int(step)):
      for key, value in metrics.items():
        self._tf.summary.scalar(key, float(value))
    self._tensorboard.flush()

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tensorboard.close()


def read_metrics(workdir: str | Path) -> list[dict[str, float]]:
  """Records of a workdir's metrics file, one per step (the last if a step repeats)."""
  by_step: dict[int, dict[str, float]] = {}
  path = Path(workdir) / METRICS_FILE
  for line in path.read_text(encoding='utf-8').splitlines():
    if line.strip():
      record = json.loads(line)
      by_step.setdefault(record['step'], {}).update(record)
  return [by_step[s] for s in sorted(by_step)]


class Progress:
  """Throughput and time left, measured between successive reports."""

  def __init__(self, total_steps: int, global_batch: int, start_step: int):
    self.total, self.batch = total_steps, global_batch
    self._last_step, self._last_time = start_step, time.monotonic()

  def update(self, step: int) -> dict[str, float]:
    """{'images_per_second', 'seconds_left'} since the previous update."""
    now = time.monotonic()
    seconds_per_step = (now - self._last_time) / max(step - self._last_step, 1)
    self._last_step, self._last_time = step, now
    return {'images_per_second': self.batch / max(seconds_per_step, 1e-9),
            'seconds_left': seconds_per_step * (self.total - step)}


def progress_line(step: int, total: int, metrics: Mapping[str, float]) -> str:
  """'step 40/600 | loss 1.2 | ... | 812.0 img/s | 3m05s left'."""
  fields = [f'step {step}/{total}']
  for key, value in metrics.items():
    if key == 'images_per_second':
      fields.append(f'{value:.1f} img/s')
    elif key == 'seconds_left':
      fields.append(f'{_duration(value)} left')
    else:
      fields.append(f'{key} {value:.4g}')
  return ' | '.join(fields)


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'
