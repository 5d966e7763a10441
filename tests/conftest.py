"""In CI (REALM_JAX_NO_SKIPS=1, set by .ci/run) a skipped test fails: CI
installs every extra, so a skip there means something is missing that must
be there. REALM_JAX_ALLOWED_SKIPS names, by the start of their reason
(separated by '|'), the skips CI accepts and reports, e.g. the browser test
where Chromium could not be installed."""
import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  del item, call
  outcome = yield
  report = outcome.get_result()
  if not (report.skipped and os.environ.get("REALM_JAX_NO_SKIPS") == "1"):
    return
  reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple)
               else report.longrepr).removeprefix("Skipped: ")
  allowed = [a for a in os.environ.get("REALM_JAX_ALLOWED_SKIPS",
                                       "").split("|") if a]
  if not any(reason.startswith(a) for a in allowed):
    report.outcome = "failed"
    report.longrepr = (f"skipped in CI, where it must run "
                       f"(REALM_JAX_NO_SKIPS=1): {reason}")
