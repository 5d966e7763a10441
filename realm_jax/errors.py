"""Errors main reports in one line (no traceback unless REALM_JAX_TRACEBACK)."""


class JobFailed(RuntimeError):
  """A child process (the embedding job) failed for good; the message names
  its log, which holds its own traceback."""
