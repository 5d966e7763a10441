"""Checksums of files written once and read many times (checkpoints, index
versions), and a memo so that a reader that starts often (`answer`) hashes
a given set of files once, not at every start.

The memo stores each file's (size, mtime_ns) at the time it verified; any
rewrite of a file changes its mtime, so a flipped byte written after the
check is caught at the next start. What it cannot see is a change that also
restores the mtime, which no cheap check can.
"""
import contextlib
import hashlib
import json
import os
from typing import Callable

_HASH_CHUNK = 1 << 22


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    # hashlib releases the GIL on large buffers: verifying in a background
    # thread does not stall the trainer.
    while chunk := f.read(_HASH_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def tree_files(directory: str) -> list[str]:
  """Every file under `directory`, as sorted relative paths."""
  out = []
  for root, _, files in os.walk(directory):
    out += [os.path.relpath(os.path.join(root, f), directory) for f in files]
  return sorted(out)


def write_json_atomic(path: str, obj):
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=1)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):   # e.g. the disk filled
      os.remove(tmp)
    raise


def read_json(path: str, fix: str = ""):
  """json.load of `path`; a truncated or corrupt file raises ValueError
  naming it (and `fix`, what to do), not a bare JSONDecodeError."""
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{path} is not valid JSON (truncated or corrupt: "
                       f"{e}){'; ' + fix if fix else ''}") from e


def _stats(directory: str, files) -> dict:
  out = {}
  for rel in files:
    st = os.stat(os.path.join(directory, rel))
    out[rel] = [st.st_size, st.st_mtime_ns]
  return out


def verify_once(directory: str, files, check: Callable[[], object],
                memo_path: str):
  """Runs `check()` (which raises on corruption) unless `memo_path` records
  a successful check of exactly these files with their current size and
  mtime; records a success. Returns check()'s result, or None when skipped."""
  try:
    stats = _stats(directory, files)
  except FileNotFoundError:
    stats = None
  if stats is not None and os.path.isfile(memo_path):
    try:
      with open(memo_path) as f:
        if json.load(f) == stats:
          return None
    except (OSError, ValueError):
      pass   # an unreadable memo only costs a re-check
  result = check()
  if stats is not None:
    try:
      write_json_atomic(memo_path, stats)
    except OSError:
      pass   # a read-only workdir: verify every time
  return result
