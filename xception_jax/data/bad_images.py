"""Image files that do not decode: found cheaply when a folder is indexed, named when
decoding fails, or skipped and counted (`bad_images='skip'`).

What decodes is what TensorFlow's decoders read: JPEG (also CMYK and
grayscale), PNG, GIF and BMP, whatever the file's suffix says.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import re
from typing import Sequence

import tensorflow as tf
from absl import logging

MODES = ('error', 'skip')
SIGNATURES = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n', b'GIF87a', b'GIF89a', b'BM')
NAMED = 3  # Files named in a message; the rest are counted.
HINT = 'remove or replace it, or set --config.bad_images=skip to skip such files'


def header_problem(path: str) -> str:
  """Why the file at `path` cannot be an image, from its first bytes ('' when it may be)."""
  with open(path, 'rb') as f:
    head = f.read(8)
  if not head:
    return 'empty file'
  if not any(head.startswith(s) for s in SIGNATURES):
    return 'not a JPEG, PNG, GIF or BMP file'
  return ''


def decode_problem(data: bytes) -> str:
  """Why `data` does not decode as an image ('' when it does): TensorFlow's own reason."""
  try:
    tf.io.decode_image(data, channels=3, expand_animations=False)
  except tf.errors.OpError as e:
    return re.sub(r'\{\{.*?\}\}\s*', '', e.message).splitlines()[0].strip()
  return ''


def listing(problems: Sequence[tuple[str, str]]) -> str:
  named = '; '.join(f'{path} ({why})' for path, why in problems[:NAMED])
  more = f' and {len(problems) - NAMED} more' if len(problems) > NAMED else ''
  return named + more


def screen(paths: Sequence[str], labels: Sequence, mode: str, where: str) -> tuple[tuple, tuple]:
  """`paths` and `labels` without files whose first bytes are no image's.

  Reads 8 bytes of each file (in threads: network file systems answer slowly,
  not little). Under 'error' such a file is a ValueError naming it; under
  'skip' it is left out of the index with a warning, so every later read of
  the split sees the same files.
  """
  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    found = list(pool.map(header_problem, paths))
  problems = [(p, why) for p, why in zip(paths, found) if why]
  if not problems:
    return tuple(paths), tuple(labels)
  if mode == 'error':
    raise ValueError(f'{len(problems)} file(s) in {where} are not images: {listing(problems)}; '
                     f'{HINT.replace("it,", "them,")}.')
  logging.warning('Skipping %d file(s) of %s that are not images: %s', len(problems), where,
                  listing(problems))
  kept = [i for i, why in enumerate(found) if not why]
  return tuple(paths[i] for i in kept), tuple(labels[i] for i in kept)


def undecodable(files: Sequence[str]) -> list[tuple[str, str]]:
  """(file, reason) of those of `files` whose contents do not decode."""
  problems = []
  for name in files:
    try:
      data = tf.io.read_file(name).numpy()
    except tf.errors.OpError as e:
      problems.append((name, e.message.splitlines()[0]))
      continue
    why = decode_problem(data)
    if why:
      problems.append((name, why))
  return problems


@dataclasses.dataclass
class SkipLog:
  """Images skipped so far ('skip' mode) and the first few of their files."""
  count: int = 0
  files: list = dataclasses.field(default_factory=list)

  def add(self, count: int, files_of_batch) -> None:
    """Counts a batch's `count` skipped images; names them (decoding the batch's files
    again, a rare cost) while fewer than NAMED are named."""
    self.count += count
    if count and len(self.files) < NAMED:
      problems = undecodable(files_of_batch())
      self.files.extend(problems)
      logging.warning('Skipped %d image(s) that do not decode (%d so far): %s', count,
                      self.count, listing(problems))
