r"""Runs several configs into sibling workdirs: one after another here, or one job each on a cluster.

  python -m xception_jax.sweep --root=runs/fig9 configs/ablations.py:xception,quick \
      configs/ablations.py:no_residual,quick configs/ablations.py:inception_v3,quick
  python -m xception_jax.plot runs/fig9/* --metric=eval/top1_ema --out=fig9.png

Each run is `[NAME=]CONFIG[:VARIANT]` and trains in ROOT/NAME; NAME defaults
to the variant's words without 'quick'/'local' ('no_residual'), or the
config's file name when there is no variant. Arguments after `--` go to every
run (`-- --config.total_steps=1000`). All configs are loaded before anything
starts, so a misspelt one fails at once. A run whose workdir holds
final_metrics.json is finished and skipped; any other resumes from its
latest checkpoint.

Launchers: 'local' (default) runs `python -m xception_jax.main` here, in
sequence; 'slurm' submits one `sbatch launch/slurm.sbatch` job per run
(CONFIG and WORKDIR exported); 'tpu_pod' starts `launch/tpu_pod.sh all` per
run on its own slice, named $TPU_NAME-<name> (ZONE, ACCELERATOR, ... from the
environment), logs in ROOT/<name>.launch.log, and waits for all.
--dry_run prints the commands instead.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from absl import app, flags

from xception_jax.trainer.config_defaults import SIZE_VARIANTS, load_config

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined only when it runs: other tools share flag names)."""
  flags.DEFINE_string('root', None, 'Parent directory of the runs\' workdirs.', required=True)
  flags.DEFINE_enum('launcher', 'local', ['local', 'slurm', 'tpu_pod'], 'Where the runs go.')
  flags.DEFINE_bool('dry_run', False, 'Print the commands instead of running them.')
  flags.DEFINE_bool('keep_going', False, 'Local runs: go on after a failed run.')

REPO = Path(__file__).resolve().parents[2]
FINISHED = 'final_metrics.json'


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  spec: str          # What --config= takes: 'configs/x.py' or 'configs/x.py:variant'.
  workdir: str


def run_name(spec: str) -> str:
  """'configs/ablations.py:no_residual,quick' → 'no_residual'; 'configs/imagenet.py' → 'imagenet'."""
  path, _, variant = spec.partition(':')
  words = [w.strip() for w in variant.split(',') if w.strip() and w.strip() not in SIZE_VARIANTS]
  return '_'.join(words) if words else Path(path).stem


def plan(specs: Sequence[str], root: str) -> list[Run]:
  """The runs of `[NAME=]CONFIG[:VARIANT]` specs, their configs loaded (errors now, not later)."""
  runs = []
  for item in specs:
    name, sep, spec = item.partition('=')
    if not sep:
      name, spec = run_name(item), item
    load_config(spec)
    runs.append(Run(name, spec, os.path.join(root, name)))
  names = [r.name for r in runs]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f'Two runs would share the workdir name(s) {", ".join(repeated)}; name them '
                     'with NAME=CONFIG:VARIANT.')
  return runs


def _launch_script(name: str) -> str:
  return os.path.relpath(REPO / 'launch' / name)


def command(run: Run, launcher: str, overrides: Sequence[str]) -> tuple[dict[str, str], list[str]]:
  """(environment additions, command line) that start `run` under `launcher`."""
  if launcher == 'local':
    return {}, [sys.executable, '-m', 'xception_jax.main', f'--config={run.spec}',
                f'--workdir={run.workdir}', *overrides]
  env = {'CONFIG': run.spec, 'WORKDIR': run.workdir}
  if launcher == 'slurm':
    exported = ','.join(['ALL'] + [f'{k}={v}' for k, v in env.items()])
    return {}, ['sbatch', f'--job-name={run.name}', f'--export={exported}',
                _launch_script('slurm.sbatch'), *overrides]
  slice_name = re.sub(r'[^a-z0-9-]+', '-', f'{os.environ.get("TPU_NAME", "sweep")}-{run.name}'
                      .lower()).strip('-')
  return {**env, 'TPU_NAME': slice_name}, ['bash', _launch_script('tpu_pod.sh'), 'all',
                                           *overrides]


def shell_line(env: dict[str, str], argv: Sequence[str]) -> str:
  return ' '.join([f'{k}={shlex.quote(v)}' for k, v in env.items()] + [shlex.join(argv)])


def sweep(runs: Sequence[Run], launcher: str, overrides: Sequence[str], dry_run: bool = False,
          keep_going: bool = False) -> int:
  """Starts the runs; returns the exit status (0, or the first failure's)."""
  todo = [r for r in runs if not (Path(r.workdir) / FINISHED).exists()]
  for r in runs:
    if r not in todo:
      print(f'{r.name}: finished ({Path(r.workdir) / FINISHED}), skipped.', flush=True)
  commands = [(r, *command(r, launcher, overrides)) for r in todo]
  if dry_run:
    for _, env, argv in commands:
      print(shell_line(env, argv))
    return 0
  if launcher == 'tpu_pod':
    return _run_concurrently(commands)
  status = 0
  for r, env, argv in commands:
    print(f'=== {r.name}: {shell_line(env, argv)}', flush=True)
    code = subprocess.run(argv, env={**os.environ, **env}).returncode
    if code:
      print(f'=== {r.name} failed with exit status {code}.', flush=True)
      status = status or code
      if not keep_going and launcher == 'local':
        return status
  return status


def _run_concurrently(commands) -> int:
  """One process per run (each blocks on its own slice), logs beside the workdirs."""
  children = []
  for r, env, argv in commands:
    log = Path(r.workdir).with_name(f'{r.name}.launch.log')
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f'=== {r.name}: {shell_line(env, argv)} (log {log})', flush=True)
    children.append((r, subprocess.Popen(argv, env={**os.environ, **env},
                                         stdout=open(log, 'w'), stderr=subprocess.STDOUT)))
  status = 0
  for r, child in children:
    code = child.wait()
    print(f'=== {r.name}: exit status {code}.', flush=True)
    status = status or code
  return status


def main(argv):
  specs = [a for a in argv[1:] if not a.startswith('-')]
  overrides = [a for a in argv[1:] if a.startswith('-')]
  if not specs:
    raise app.UsageError('Name the runs: python -m xception_jax.sweep --root=DIR '
                         'configs/x.py:variant ... [-- --config.field=value ...]')
  try:
    runs = plan(specs, FLAGS.root)
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  status = sweep(runs, FLAGS.launcher, overrides, FLAGS.dry_run, FLAGS.keep_going)
  if FLAGS.launcher == 'local' and not FLAGS.dry_run:
    print('Plot: python -m xception_jax.plot ' + ' '.join(shlex.quote(r.workdir) for r in runs)
          + ' --metric=eval/top1_ema --out=profile.png')
  sys.exit(status)


if __name__ == '__main__':
  define_flags()
  app.run(main)
