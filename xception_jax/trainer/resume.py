"""What a resumed run may change: the workdir's saved config against the new one.

Three kinds of field:
- structure (`STRUCTURE`): the model, its options, the optimizer and its
  parameter groups decide what a checkpoint holds; a change is always refused
  (start a new workdir, or `init_from` the old weights);
- free (`FREE`): logging, evaluation, checkpointing, where the data lives, how
  operations are computed, and the run's length (the staircase schedule does
  not depend on it; a cosine schedule does, and then it changes a step's
  meaning) change freely;
- every other field changes what a step means (batch size, data, schedule,
  augmentation, seed, ...): refused unless `resume_with_changes` names it, and
  then logged and appended to the workdir's `config_changes.jsonl`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import ml_collections
from absl import logging

from xception_jax.trainer.validation import flatten, split_names

CONFIG_FILE = 'config.json'
CHANGES_FILE = 'config_changes.jsonl'
STRUCTURE = ('model', 'model_kwargs', 'optimizer', 'freeze', 'lr_multipliers')
FREE = ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints',
        'async_checkpoints', 'eval_only', 'eval_batch_size', 'eval_split', 'eval_crop_fraction',
        'eval_resize', 'eval_datasets', 'compiler_options', 'dtype',
        'map_top_k', 'class_weights', 'nonfinite_steps', 'compilation_cache_dir', 'data_dir',
        'manual_dir', 'num_epochs', 'total_steps', 'steps_per_call', 'execution', 'distributed',
        'init_from', 'bad_images', 'resume_with_changes', 'workdir_lock_stale_seconds')


# The run's length decides a cosine schedule's every step: no longer free then.
LENGTH = ('num_epochs', 'total_steps')


def kind(field: str, lr_schedule: str = 'exponential') -> str:
  """'structure', 'free' or 'meaning' for a dotted config field."""
  top = field.split('.')[0]
  if top in STRUCTURE:
    return 'structure'
  if top in LENGTH and lr_schedule == 'cosine':
    return 'meaning'
  return 'free' if top in FREE else 'meaning'


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as `config.json` stores it (tuples become lists), flattened by dotted path."""
  return flatten(json.loads(config.to_json_best_effort()))


def saved_config(workdir: Path) -> Optional[dict[str, Any]]:
  path = workdir / CONFIG_FILE
  return flatten(json.loads(path.read_text())) if path.is_file() else None


class _Default:
  def __repr__(self):
    return '(default)'

  def __eq__(self, other):
    return isinstance(other, _Default)

  def __hash__(self):
    return 0


DEFAULT = _Default()  # A model option a config does not set.


def differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  """{field: (old, new)} for fields whose values differ. Fields one config lacks (added to
  or removed from the trainer since) are not compared, except model options (absent: the
  model's default)."""
  absent = DEFAULT
  fields = (old.keys() & new.keys()) | {k for k in old.keys() | new.keys()
                                        if k.startswith('model_kwargs.')}
  return {k: (old.get(k, absent), new.get(k, absent)) for k in sorted(fields)
          if old.get(k, absent) != new.get(k, absent) and k != 'model_kwargs'}


def describe(changes: dict[str, tuple[Any, Any]]) -> str:
  return '; '.join(f'{k}: {old!r} -> {new!r}' for k, (old, new) in changes.items())


def check(workdir: Path, config: ml_collections.ConfigDict,
          latest_step: int) -> dict[str, tuple[Any, Any]]:
  """The changes of `config` against the workdir's saved config that resuming accepts.

  Raises a one-line ValueError for a structure change, or for a change of a
  step's meaning that `resume_with_changes` does not name. Touches no file.
  """
  old = saved_config(workdir)
  if old is None:
    logging.warning('%s has checkpoints but no %s: the config cannot be compared; the '
                    "checkpoint's structure still is.", workdir, CONFIG_FILE)
    return {}
  schedule = config.get('lr_schedule', 'exponential')
  changes = {k: v for k, v in differences(old, as_json(config)).items()
             if kind(k, schedule) != 'free'}
  structure = {k: v for k, v in changes.items() if kind(k, schedule) == 'structure'}
  where = f'{workdir} holds checkpoints up to step {latest_step} of another config'
  if structure:
    raise ValueError(f'{where}, whose state has another structure ({describe(structure)}); '
                     'use a new workdir (with init_from to start from its weights).')
  allowed = set(split_names(config.get('resume_with_changes', '')))
  refused = {k: v for k, v in changes.items() if k not in allowed}
  if refused:
    raise ValueError(f'{where} ({describe(refused)}): these change what a step means; to '
                     f'resume anyway, pass --config.resume_with_changes={",".join(refused)}.')
  return changes


def record(workdir: Path, step: int, changes: dict[str, tuple[Any, Any]]) -> None:
  """Logs accepted changes and appends them to the workdir's config_changes.jsonl."""
  if not changes:
    return
  logging.warning('Resuming at step %d with changed config: %s', step, describe(changes))
  as_text = lambda v: repr(v) if v is DEFAULT else v
  entry = {'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'step': step,
           'changes': {k: {'old': as_text(old), 'new': as_text(new)}
                       for k, (old, new) in changes.items()}}
  with open(workdir / CHANGES_FILE, 'a') as f:
    f.write(json.dumps(entry) + '\n')
