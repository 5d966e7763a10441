"""Bootstrap confidence intervals for per-question metrics (EM, recall@k).

With a few hundred questions a metric moves by several points from one
sample to another, so every comparison the demo prints carries a 95% CI:
the percentile bootstrap over questions, and for a difference between two
systems on the same questions the paired bootstrap (the same resampled
questions for both), which is much tighter than two separate intervals.
"""
import numpy as np

RESAMPLES = 2000


def _resample_means(values: np.ndarray, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(values), size=(RESAMPLES, len(values)))
  return values[idx].mean(axis=1)


def bootstrap_ci(values, seed: int = 0) -> tuple[float, float]:
  """95% percentile-bootstrap interval of the mean of `values` (0/1 or real)."""
  values = np.asarray(values, np.float64)
  if values.size == 0:
    raise ValueError("no values to bootstrap")
  lo, hi = np.percentile(_resample_means(values, seed), [2.5, 97.5])
  return float(lo), float(hi)


def paired_bootstrap(a, b, seed: int = 0) -> dict:
  """mean(a) - mean(b) over the same questions, with its paired 95% CI.

  Returns {"difference", "ci95": [lo, hi]}; the CI excludes 0 when the
  difference holds on resampled question sets 97.5% of the time.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.size == 0:
    raise ValueError(f"paired values must have one equal, non-zero length; "
                     f"got {a.shape} and {b.shape}")
  lo, hi = np.percentile(_resample_means(a - b, seed), [2.5, 97.5])
  return {"difference": float(a.mean() - b.mean()),
          "ci95": [float(lo), float(hi)]}
