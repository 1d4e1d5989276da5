"""Downloads that are verified before anything is kept.

Files published at a URL (the Keras ImageNet weights) are streamed to a
temporary file beside their place in the cache, hashed on the way, and
renamed only when the hash the publisher states matched; a mismatch or a
broken transfer leaves nothing behind. Hugging Face Hub files go through
`huggingface_hub` (its cache, `HF_HOME`, `HF_HUB_OFFLINE`, `HF_ENDPOINT`) and
are checked against the SHA-256 the Hub publishes for them.

Environment:
  XCEPTION_JAX_CACHE           the cache directory (default ~/.cache/xception_jax)
  XCEPTION_JAX_WEIGHTS_MIRROR  a base URL that replaces the public hosts of URL
                               files: MIRROR/<file name> (clusters without internet)
  XCEPTION_JAX_OFFLINE=1       never download (HF_HUB_OFFLINE=1 also counts)
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

CACHE_ENV = 'XCEPTION_JAX_CACHE'
MIRROR_ENV = 'XCEPTION_JAX_WEIGHTS_MIRROR'
OFFLINE_ENV = 'XCEPTION_JAX_OFFLINE'
HUB_ENDPOINT = 'https://huggingface.co'
_CHUNK = 1 << 20


class DownloadError(OSError):
  """A file could not be had, or did not match its published hash: one line saying what to do."""


def cache_dir() -> Path:
  """Where downloads and converted weights are kept ($XCEPTION_JAX_CACHE or ~/.cache/xception_jax)."""
  return Path(os.environ.get(CACHE_ENV) or Path.home() / '.cache' / 'xception_jax')


def _truthy(name: str) -> bool:
  return os.environ.get(name, '').strip().lower() in ('1', 'true', 'yes', 'on')


def offline() -> bool:
  """Whether downloads are off (XCEPTION_JAX_OFFLINE or HF_HUB_OFFLINE)."""
  return _truthy(OFFLINE_ENV) or _truthy('HF_HUB_OFFLINE')


def file_hash(path: str | os.PathLike, algorithm: str) -> str:
  """The hex digest of a file."""
  digest = hashlib.new(algorithm)
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(_CHUNK), b''):
      digest.update(chunk)
  return digest.hexdigest()


def split_hash(expected: str) -> tuple[str, str]:
  """'md5:0a58...' → ('md5', '0a58...')."""
  algorithm, _, value = expected.partition(':')
  if algorithm not in ('md5', 'sha256') or not value:
    raise ValueError(f"A file hash is 'md5:HEX' or 'sha256:HEX', got {expected!r}.")
  return algorithm, value.lower()


def mirrored(url: str) -> str:
  """`url`, or its file name under $XCEPTION_JAX_WEIGHTS_MIRROR when that is set."""
  mirror = os.environ.get(MIRROR_ENV, '').strip()
  return f'{mirror.rstrip("/")}/{url.rsplit("/", 1)[-1]}' if mirror else url


def fetch_url(url: str, destination: Path, expected: str, timeout: float = 60.0) -> Path:
  """`destination`, downloaded from `url` (or its mirror) unless it is there with hash `expected`.

  `expected` is 'md5:HEX' or 'sha256:HEX'. A file already at `destination` is
  checked too; one that does not match is a DownloadError (it is not replaced
  silently). Offline, a missing file is a DownloadError saying where to put it.
  """
  algorithm, want = split_hash(expected)
  source = mirrored(url)
  if destination.is_file():
    got = file_hash(destination, algorithm)
    if got != want:
      raise DownloadError(f'{destination} has {algorithm} {got}, not the published {want}: '
                          f'delete it to download {source} again.')
    return destination
  if offline():
    raise DownloadError(f'{destination.name} is not in the cache and downloads are off '
                        f'({OFFLINE_ENV} or HF_HUB_OFFLINE): fetch {url} and save it as '
                        f'{destination} ({algorithm} {want}), or set {MIRROR_ENV}.')
  destination.parent.mkdir(parents=True, exist_ok=True)
  handle, partial = tempfile.mkstemp(prefix=f'.{destination.name}.', suffix='.part',
                                     dir=destination.parent)
  digest = hashlib.new(algorithm)
  try:
    with os.fdopen(handle, 'wb') as out, urllib.request.urlopen(source, timeout=timeout) as r:
      length = r.headers.get('Content-Length')
      received = 0
      for chunk in iter(lambda: r.read(_CHUNK), b''):
        out.write(chunk)
        digest.update(chunk)
        received += len(chunk)
    if length is not None and received != int(length):
      raise DownloadError(f'Downloading {source} broke off after {received:,} of '
                          f'{int(length):,} bytes; nothing was kept; retry.')
    got = digest.hexdigest()
    if got != want:
      raise DownloadError(f'{source} has {algorithm} {got}, not the published {want}; nothing '
                          'was kept (a changed or damaged file, or a wrong mirror).')
    os.replace(partial, destination)
  except (urllib.error.URLError, OSError) as e:
    if isinstance(e, DownloadError):
      raise
    raise DownloadError(f'Downloading {source} failed ({getattr(e, "reason", e)}); nothing was '
                        'kept; retry, or set a mirror or the offline cache.') from None
  finally:
    if os.path.exists(partial):
      os.unlink(partial)
  return destination


def hub_url(repo_id: str, filename: str) -> str:
  endpoint = os.environ.get('HF_ENDPOINT', HUB_ENDPOINT).rstrip('/')
  return f'{endpoint}/{repo_id}/resolve/main/{filename}'


def _discard_hub_file(path: Path) -> None:
  """Removes a Hub cache entry: the snapshot link and the blob it points to."""
  blob = path.resolve()
  for p in (path, blob):
    if p.exists() or p.is_symlink():
      p.unlink()


def fetch_hub(repo_id: str, filename: str, sha256: Optional[str] = None) -> Path:
  """A Hugging Face Hub file from its cache, downloading it there first when missing.

  The file's SHA-256 must equal `sha256` when given, else the one the Hub
  publishes for it (its LFS object id, which the Hub's cache names the blob
  by). A mismatch removes the file from the Hub's cache and raises a
  DownloadError; so does a broken transfer (its partial file removed).
  """
  import huggingface_hub
  from huggingface_hub import errors
  url = hub_url(repo_id, filename)
  try:
    path = Path(huggingface_hub.hf_hub_download(repo_id, filename, local_files_only=offline(),
                                                endpoint=os.environ.get('HF_ENDPOINT') or None))
  except errors.LocalEntryNotFoundError:
    if offline():
      raise DownloadError(f'{repo_id}/{filename} is not in the Hugging Face cache and downloads '
                          f'are off ({OFFLINE_ENV} or HF_HUB_OFFLINE): fetch {url} on a connected '
                          'machine with huggingface_hub into the same HF_HOME, or set HF_ENDPOINT '
                          'to a mirror.') from None
    _discard_partial_downloads(repo_id)
    raise DownloadError(f'Downloading {url} failed; nothing was kept; retry, or set HF_ENDPOINT '
                        'to a mirror.') from None
  except (errors.HfHubHTTPError, OSError, ValueError) as e:
    _discard_partial_downloads(repo_id)
    first = (str(e).splitlines() or [type(e).__name__])[0]
    raise DownloadError(f'Downloading {url} failed ({first}); nothing was kept; retry, or set '
                        'HF_ENDPOINT to a mirror.') from None
  published = (sha256 or path.resolve().name).lower()
  got = file_hash(path, 'sha256')
  if got != published:
    _discard_hub_file(path)
    raise DownloadError(f'{url} has sha256 {got}, not the published {published}; it was removed '
                        'from the Hugging Face cache (a changed or damaged file, or a wrong '
                        'mirror).')
  return path


def _discard_partial_downloads(repo_id: str) -> None:
  """Removes the Hub cache's partial files of `repo_id` (what a broken transfer leaves)."""
  from huggingface_hub import constants
  folder = Path(constants.HF_HUB_CACHE) / f'models--{repo_id.replace("/", "--")}' / 'blobs'
  for partial in folder.glob('*.incomplete') if folder.is_dir() else ():
    partial.unlink()
