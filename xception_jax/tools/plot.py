r"""Training profiles as in the paper's figures: one metric against gradient steps, a line per run.

  python -m xception_jax.plot runs/fig9/xception runs/fig9/no_residual --metric=eval/top1_ema \
      --out=profile.png
  python -m xception_jax.plot runs/fig9/* --metric=eval/top1_ema --labels=Xception,"No residual"

Reads each workdir's metrics.jsonl (written by the trainer); the legend names
each line by its workdir's name unless --labels is given.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from absl import app, flags

from xception_jax.trainer.metric_writers import METRICS_FILE, read_metrics

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined only when it runs: other tools share flag names)."""
  flags.DEFINE_string('metric', 'eval/top1_ema', 'Metric to plot, as in metrics.jsonl.')
  flags.DEFINE_string('out', 'profile.png', 'Image file to write (PNG, SVG, PDF).')
  flags.DEFINE_list('labels', [], 'Legend names, one per workdir (default: their names).')
  flags.DEFINE_string('title', '', 'Figure title.')
  flags.DEFINE_bool('percent', True, 'Show fractions in [0, 1] as percentages.')


def profile(workdir: str | Path, metric: str) -> tuple[list[int], list[float]]:
  """(steps, values) of `metric` in a workdir's metrics file, by step."""
  path = Path(workdir) / METRICS_FILE
  if not path.is_file():
    raise ValueError(f'{workdir} has no {METRICS_FILE}: not a training workdir.')
  records = [r for r in read_metrics(workdir) if metric in r]
  if not records:
    names = sorted({k for r in read_metrics(workdir) for k in r if k != 'step'})
    raise ValueError(f'{workdir} never logged {metric!r}; it logged: {", ".join(names)}.')
  return [int(r['step']) for r in records], [float(r[metric]) for r in records]


def profile_figure(workdirs: Sequence[str | Path], metric: str,
                   labels: Optional[Sequence[str]] = None, title: str = '',
                   percent: bool = True):
  """A matplotlib Figure: `metric` against gradient steps, one line per workdir, with a legend."""
  import matplotlib
  matplotlib.use('Agg')  # Files only: no display needed.
  import matplotlib.pyplot as plt
  if labels and len(labels) != len(workdirs):
    raise ValueError(f'{len(labels)} labels for {len(workdirs)} workdirs.')
  labels = list(labels) if labels else [Path(os.path.normpath(w)).name for w in workdirs]
  runs = [profile(w, metric) for w in workdirs]
  scale = 100.0 if percent and all(0 <= v <= 1 for _, values in runs for v in values) else 1.0
  figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=100)
  for (steps, values), label in zip(runs, labels):
    axes.plot(steps, [scale * v for v in values], marker='o', markersize=3, label=label)
  axes.set_xlabel('Gradient descent steps')
  axes.set_ylabel(f'{metric} (%)' if scale == 100.0 else metric)
  axes.grid(True, alpha=0.3)
  axes.legend()
  if title:
    axes.set_title(title)
  figure.tight_layout()
  return figure


def main(argv):
  workdirs = argv[1:]
  if not workdirs:
    raise app.UsageError('Name one or more workdirs: python -m xception_jax.plot WORKDIR...')
  try:
    figure = profile_figure(workdirs, FLAGS.metric, FLAGS.labels, FLAGS.title, FLAGS.percent)
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  figure.savefig(FLAGS.out)
  print(f'Wrote {FLAGS.out}: {FLAGS.metric} of {len(workdirs)} run(s).')


if __name__ == '__main__':
  define_flags()
  app.run(main)
