"""Searchers: ScaNN recall against exact search, exclusion, exact agreement of
the three searchers, tie-breaking, determinism, and ScaNN save/load."""
import os
import subprocess
import sys

import numpy as np
import pytest

from realm_jax.index import scann_searcher, search, searchers


def clustered(n, dim, num_clusters, seed, sigma=0.5):
  """Gaussian clusters: a crude stand-in for real embedding geometry."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_clusters, dim)).astype(np.float32)
  labels = rng.integers(0, num_clusters, n)
  return (centers[labels] + sigma * rng.normal(size=(n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def data():
  x = clustered(50_000 + 500, 32, 100, seed=0)
  return x[:50_000], x[50_000:]


@pytest.fixture(scope="module")
def truth(data):
  emb, queries = data
  return search.ExactSearcher(emb).search(queries, 10)


def recall(found, true):
  return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, true)])


@pytest.mark.parametrize("mode", ["ah", "tree"])
def test_scann_recall_at_10_against_exact(data, truth, mode):
  emb, queries = data
  searcher = scann_searcher.ScannSearcher(emb, mode=mode, num_threads=1)
  ids, scores = searcher.search(queries, 10)
  assert recall(ids, truth[0]) >= 0.95
  # Scores are exact inner products of the returned rows.
  np.testing.assert_allclose(
      scores, np.einsum("qd,qkd->qk", queries, emb[ids]), rtol=1e-5, atol=1e-5)


def test_tree_calibrates_leaves_to_search_for_recall():
  # 5,000 clusters of 10 rows: neighbours spread over many of the 224 leaves,
  # so the rule of thumb (12 leaves) falls short of recall 0.95.
  x = clustered(50_000 + 500, 32, 5_000, seed=0)
  emb, queries = x[:50_000], x[50_000:]
  truth, _ = search.ExactSearcher(emb).search(queries, 10)
  searcher = scann_searcher.ScannSearcher(emb, mode="tree", num_threads=1)
  assert searcher.leaves_to_search > searcher.settings["num_leaves_to_search"]
  assert searcher.calibration[-1][1] >= 0.95          # on sampled rows
  assert recall(searcher.search(queries, 10)[0], truth) >= 0.95   # held out
  searcher.leaves_to_search = searcher.settings["num_leaves_to_search"]
  assert recall(searcher.search(queries, 10)[0], truth) < 0.9


def test_rules_of_thumb_pick_the_mode_by_size():
  assert scann_searcher.scann_settings(19_999, 128)["mode"] == "brute_force"
  assert scann_searcher.scann_settings(50_000, 128)["mode"] == "ah"
  s = scann_searcher.scann_settings(1_000_000, 128)
  assert (s["mode"], s["num_leaves"], s["num_leaves_to_search"]) == ("tree", 1000, 50)
  assert scann_searcher.scann_settings(1_000_000, 128, num_leaves=10)["num_leaves"] == 10
  with pytest.raises(ValueError, match="num_leafs"):
    scann_searcher.scann_settings(10, 4, num_leafs=3)


@pytest.fixture(scope="module")
def small():
  rng = np.random.default_rng(1)
  emb = rng.normal(size=(5_003, 24)).astype(np.float32)
  queries = rng.normal(size=(64, 24)).astype(np.float32)
  return emb, queries


def all_kinds(emb):
  return {"exact": searchers.make_searcher(emb, "exact"),
          "scann": searchers.make_searcher(emb, "scann", num_threads=1),
          "device": searchers.make_searcher(emb, "device")}


def test_three_searchers_agree_exactly(small):
  emb, queries = small
  searchers = all_kinds(emb)
  assert searchers["scann"].settings["mode"] == "brute_force"  # < 20k rows
  ids, scores = searchers["exact"].search(queries, 10)
  assert np.all(np.diff(scores, axis=1) <= 0)
  brute = queries @ emb.T
  np.testing.assert_array_equal(ids, np.argsort(-brute, axis=1, kind="stable")[:, :10])
  for kind in ("scann", "device"):
    other_ids, other_scores = searchers[kind].search(queries, 10)
    np.testing.assert_array_equal(other_ids, ids, err_msg=kind)
    np.testing.assert_array_equal(other_scores, scores, err_msg=kind)


def test_exclusion_removes_ids_per_query(small):
  emb, queries = small
  ids, _ = search.ExactSearcher(emb).search(queries, 50)
  # Per query: drop its 1st and 3rd hits; the 41st hit and -1 padding must
  # change nothing else.
  exclude = np.stack([ids[:, 0], ids[:, 2], ids[:, 40],
                      np.full(len(ids), -1)], 1)
  expected = np.concatenate([ids[:, 1:2], ids[:, 3:10]], axis=1)
  for kind, searcher in all_kinds(emb).items():
    got, scores = searcher.search(queries, 8, exclude=exclude)
    np.testing.assert_array_equal(got, expected, err_msg=kind)
    assert not (got[:, :, None] == exclude[:, None, :3]).any()


def test_ties_broken_by_lower_id():
  rng = np.random.default_rng(2)
  emb = rng.normal(size=(300, 8)).astype(np.float32)
  emb[7] = 10.0 / np.sqrt(8)  # the longest row: the top hit of its direction
  emb[[250, 40, 199]] = emb[7]  # four identical rows: exact ties
  queries = emb[7:8]
  for kind, searcher in all_kinds(emb).items():
    ids, scores = searcher.search(queries, 5)
    assert list(ids[0, :4]) == [7, 40, 199, 250], kind
    assert len(set(scores[0, :4].tolist())) == 1, kind
  # Thousands of identical rows (e.g. empty blocks) across several row chunks.
  emb = np.ones((25_000, 4), np.float32)
  emb[17_000:] = 2.0
  for kind, searcher in all_kinds(emb).items():
    ids, _ = searcher.search(np.ones((2, 4), np.float32), 5)
    assert ids.tolist() == [list(range(17_000, 17_005))] * 2, kind


def test_k_beyond_rows_pads_with_minus_one():
  emb = np.eye(3, 4, dtype=np.float32)
  for kind, searcher in all_kinds(emb).items():
    ids, scores = searcher.search(np.ones((2, 4), np.float32), 5,
                                  exclude=np.array([[1], [-1]]))
    assert ids.tolist() == [[0, 2, -1, -1, -1], [0, 1, 2, -1, -1]], kind
    assert np.isneginf(scores[0, 2:]).all() and np.isneginf(scores[1, 3:]).all()


def test_repeated_candidates_are_returned_once():
  emb = np.arange(12, dtype=np.float32).reshape(6, 2)
  q = np.ones((1, 2), np.float32)
  ids, scores = search.finalize(emb, q, np.array([[5, 2, 5, -1, 4, 5]]), 4,
                                np.zeros((1, 0), np.int64))
  assert ids.tolist() == [[5, 4, 2, -1]]
  assert scores.tolist() == [[21.0, 17.0, 9.0, -np.inf]]


def test_scann_tree_is_deterministic(data):
  emb, queries = data
  runs = [scann_searcher.ScannSearcher(emb, mode="tree", num_threads=2).search(queries, 10)
          for _ in range(2)]
  np.testing.assert_array_equal(runs[0][0], runs[1][0])
  np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_scann_save_and_load_give_the_same_answers(data, tmp_path):
  emb, queries = data
  built = searchers.make_searcher(emb, "scann", cache_dir=str(tmp_path),
                               mode="tree", num_threads=1)
  [cache] = os.listdir(tmp_path)
  assert cache.startswith("scann-") and not cache.endswith(".tmp")
  loaded = searchers.make_searcher(emb, "scann", cache_dir=str(tmp_path),
                                mode="tree", num_threads=1)
  assert loaded is not built and os.listdir(tmp_path) == [cache]
  for a, b in zip(built.search(queries, 10), loaded.search(queries, 10)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="shape"):
    scann_searcher.ScannSearcher.load(str(tmp_path / cache), emb[:-1], mode="tree")


def test_a_corrupted_scann_file_is_refused_and_rebuilt(small, tmp_path):
  emb = small[0]
  built = searchers.make_searcher(emb, "scann", cache_dir=str(tmp_path),
                               mode="brute_force", num_threads=1)
  [cache] = os.listdir(tmp_path)
  dataset = tmp_path / cache / "dataset.npy"
  rng = np.random.default_rng(0)
  np.save(dataset, rng.normal(size=np.load(dataset).shape).astype(np.float32))
  with pytest.raises(ValueError, match="dataset.npy .* sha256"):
    scann_searcher.ScannSearcher.load(str(tmp_path / cache), emb,
                                      mode="brute_force")
  rebuilt = searchers.make_searcher(emb, "scann", cache_dir=str(tmp_path),
                                 mode="brute_force", num_threads=1)
  queries = emb[:7] + 0.01
  for a, b in zip(built.search(queries, 5), rebuilt.search(queries, 5)):
    np.testing.assert_array_equal(a, b)
  scann_searcher.ScannSearcher.load(str(tmp_path / cache), emb,
                                    mode="brute_force")   # verified again


def test_device_searcher_shards_over_four_devices():
  """Rows split over 4 (forced host) devices, N not divisible by 4."""
  code = """
import numpy as np, jax
from realm_jax.index import search
assert len(jax.devices()) == 4
rng = np.random.default_rng(3)
emb = rng.normal(size=(1001, 16)).astype(np.float32)
q = rng.normal(size=(5, 16)).astype(np.float32)
ex = np.array([[1, 2, -1]] * 5)
a = search.ExactSearcher(emb).search(q, 12, exclude=ex)
d = search.DeviceSearcher(emb)
assert len(d.device_emb.sharding.device_set) == 4
b = d.search(q, 12, exclude=ex)
assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
print("ok")
"""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], env=env, text=True,
                       capture_output=True, timeout=120, check=False)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
