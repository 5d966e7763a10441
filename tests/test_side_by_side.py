"""Jobs side by side in child processes, each on its own CPU cores."""
import os

import pytest

from realm_jax import side_by_side


def _cores_and_square(x):
  return sorted(os.sched_getaffinity(0)), x * x


def _fail(x):
  print("about to fail", flush=True)
  raise ValueError(f"bad input {x}")


def test_jobs_run_on_disjoint_cores_and_return_their_values(tmp_path):
  shares = side_by_side.core_shares(2)
  results = side_by_side.run([
      ("a", _cores_and_square, (3,), str(tmp_path / "a.log")),
      ("b", _cores_and_square, (4,), str(tmp_path / "b.log"))])
  assert [value for _, value in results] == [9, 16]
  if shares is None:   # one core: in order, in this process
    assert os.cpu_count() == 1 or len(os.sched_getaffinity(0)) == 1
  else:
    assert [cores for cores, _ in results] == shares
    assert not set(shares[0]) & set(shares[1])


def test_a_failed_job_raises_naming_its_error_and_log(tmp_path):
  log = str(tmp_path / "b.log")
  with pytest.raises((RuntimeError, ValueError), match="bad input 4") as e:
    side_by_side.run([("a", _cores_and_square, (3,), str(tmp_path / "a.log")),
                      ("b", _fail, (4,), log)])
  if side_by_side.core_shares(2) is not None:
    assert "b failed" in str(e.value) and log in str(e.value)
    text = open(log).read()
    assert "about to fail" in text and "Traceback" in text
