"""Errors main reports in one line (no traceback unless REALM_JAX_TRACEBACK)."""
import contextlib
import errno
import os
import shutil

# errno values of a full disk (EDQUOT: a quota, which fills the same way).
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class JobFailed(RuntimeError):
  """A child process (the embedding job) failed for good; the message names
  its log, which holds its own traceback."""


def is_disk_full(e: BaseException) -> bool:
  return isinstance(e, OSError) and e.errno in _DISK_FULL


def disk_full_message(e: OSError, workdir: str) -> str:
  """One line: the disk is full, where (the file, else the workdir a write
  failed in, as a failed write() names no file), and what is free there."""
  where = e.filename or os.path.abspath(workdir)
  line = f"the disk is full (errno {e.errno}, {os.strerror(e.errno)}) writing "\
      f"{'' if e.filename else 'under '}{where}"
  probe = where if os.path.isdir(where) else os.path.dirname(where) or "."
  with contextlib.suppress(OSError):
    line += f"; {shutil.disk_usage(probe).free} bytes free there"
  return line + "; free some space and run again"


@contextlib.contextmanager
def removed_on_disk_full(*paths: str):
  """Removes `paths` (what the block wrote) when it fails for a full disk,
  so that they do not keep the disk full for the rerun; any other failure
  (a kill among them) keeps them for the rerun to resume from."""
  try:
    yield
  except OSError as e:
    if is_disk_full(e):
      for path in paths:
        if os.path.isdir(path):
          shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
          with contextlib.suppress(OSError):
            os.remove(path)
    raise
