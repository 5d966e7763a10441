"""Bootstrap CIs: the interval holds the mean, narrows with more questions,
and the paired interval of a real difference excludes 0."""
import numpy as np
import pytest

from realm_jax import stats


def test_bootstrap_ci_holds_the_mean_and_narrows():
  rng = np.random.default_rng(1)
  small, large = rng.random(50) < 0.4, rng.random(2000) < 0.4
  lo, hi = stats.bootstrap_ci(small)
  assert lo < small.mean() < hi
  lo_l, hi_l = stats.bootstrap_ci(large)
  assert hi_l - lo_l < (hi - lo) / 3
  assert stats.bootstrap_ci(np.ones(10)) == (1.0, 1.0)


def test_paired_bootstrap_sees_a_consistent_gain():
  rng = np.random.default_rng(2)
  base = (rng.random(300) < 0.5).astype(float)
  better = base.copy()
  better[rng.choice(np.flatnonzero(base == 0), 30, replace=False)] = 1
  out = stats.paired_bootstrap(better, base)
  assert out["difference"] == pytest.approx(0.1)
  assert 0 < out["ci95"][0] < 0.1 < out["ci95"][1]
  same = stats.paired_bootstrap(base, base)
  assert same == {"difference": 0.0, "ci95": [0.0, 0.0]}
  with pytest.raises(ValueError):
    stats.paired_bootstrap(base, base[:10])
