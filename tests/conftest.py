"""In CI (REALM_JAX_NO_SKIPS=1, set by .ci/run) a skipped test fails: CI
installs every extra, so a skip there means something is missing that must
be there. REALM_JAX_ALLOWED_SKIPS names, by the start of their reason
(separated by '|'), the skips CI accepts and reports, e.g. the browser test
where Chromium could not be installed."""
import atexit
import os
import shutil
import tempfile

import pytest

# One persistent XLA compilation cache for the whole run: the test processes
# and every realm_jax process they start (it is inherited through the
# environment) compile the same programs of the same tiny configs again and
# again; each start then loads them (about 10 s of a 35 s pretraining run).
# Compiled programs are bitwise the same from the cache, so the resume tests'
# exact comparisons hold. A test about a workdir's own cache removes the
# variable from its child's environment (tests/test_answer.py).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
      prefix="realm_jax_tests_xla_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"],
                  ignore_errors=True)


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
