"""Errors main reports in one line (no traceback unless REALM_JAX_TRACEBACK)."""
import contextlib
import errno
import os
import re
import shutil

# errno values of a full disk (EDQUOT: a quota, which fills the same way).
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class JobFailed(RuntimeError):
  """A child process (the embedding job) failed for good; the message names
  its log, which holds its own traceback."""


# numpy's message for a write that wrote less than asked (fwrite gives no
# errno): on a local disk that is a full disk.
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def is_disk_full(e: BaseException) -> bool:
  """A full disk or quota, a short write, or a file over the size limit
  (EFBIG, `ulimit -f`): no room to write, the same for the user."""
  return isinstance(e, OSError) and (
      e.errno in (*_DISK_FULL, errno.EFBIG)
      or (e.errno is None and bool(_SHORT_WRITE.search(str(e)))))


def disk_full_message(e: OSError, workdir: str) -> str:
  """One line: the disk is full, where (the file, else the workdir a write
  failed in, as a failed write() names no file), and what is free there."""
  where = e.filename or os.path.abspath(workdir)
  why = f"errno {e.errno}, {os.strerror(e.errno)}" if e.errno else \
      f"a short write: {e}"
  what = "a file reached the size limit" if e.errno == errno.EFBIG else \
      "the disk is full"
  line = f"{what} ({why}) writing {'' if e.filename else 'under '}{where}"
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
