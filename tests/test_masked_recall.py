"""Held-out query records and retrieval recall on masked sentences."""
import numpy as np
import pytest

from realm_jax.data import catalog
from realm_jax.data import qa_data
from realm_jax.index import masked_recall
from openqa_workdir import make_pretrain_workdir, tiny_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("pretrain"))
  store, _ = make_pretrain_workdir(path)
  c = tiny_config(path, **{"data.heldout_fraction": 0.3})
  return path, store, c


def test_heldout_split_is_fixed_disjoint_and_complete(workdir):
  _, store, c = workdir
  every = catalog.query_records(c, store)
  train = catalog.query_records(c, store, split="train")
  held = catalog.query_records(c, store, split="heldout")
  assert len(train) + len(held) == len(every)
  assert 0.2 < len(held) / len(every) < 0.4
  texts = lambda rs: {(r["source_uid"], r["text"]) for r in rs}
  assert not texts(train) & texts(held)
  np.testing.assert_array_equal(catalog.heldout_mask(1000, 0.3),
                                catalog.heldout_mask(1000, 0.3))
  assert not catalog.heldout_mask(1000, 0.0).any()
  with pytest.raises(ValueError, match="heldout_fraction"):
    catalog.heldout_mask(10, 1.0)


def test_recall_over_every_other_block_matches_a_hand_count(workdir):
  """With k = all blocks but the source, recall is exactly the share of
  queries whose masked span occurs in some other block."""
  path, store, c = workdir
  tok = store.tokenizer()
  queries = masked_recall.masked_queries(
      catalog.query_records(c, store, split="heldout"), tok,
      c.data.query_len, c.data.max_masks)
  n = len(queries["answers"])
  assert n >= 5
  source = store.rows_for_uids(queries["source_uids"])
  blocks = [f"{store.title(i)} {store.text(i)}" for i in range(store.num_blocks)]
  expected = np.mean([
      any(qa_data.has_answer(blocks[j], [a]) for j in range(store.num_blocks)
          if j != source[q]) for q, a in enumerate(queries["answers"])])
  got = masked_recall.masked_recall(store, queries, path, 0,
                                    k=store.num_blocks - 1)
  assert got == pytest.approx(expected)
  # The masked span is really what was masked: it occurs in its own sentence.
  held = catalog.query_records(c, store, split="heldout")
  sentences = {r["source_uid"]: [] for r in held}
  for r in held:
    sentences[r["source_uid"]].append(r["text"])
  for a, uid in zip(queries["answers"], queries["source_uids"]):
    assert any(qa_data.has_answer(t, [a]) for t in sentences[uid]), a
  one = masked_recall.masked_recall(store, queries, path, 0, k=1)
  assert 0.0 <= one <= got


def test_before_after_needs_the_initial_index(workdir, tmp_path):
  path, store, c = workdir
  held = catalog.query_records(c, store, split="heldout")
  out = masked_recall.before_after(store, store.tokenizer(), held, path, 3,
                                   c.data.query_len, c.data.max_masks)
  assert out["initial_version"] == out["pretrained_version"] == 0
  assert out["initial"] == out["pretrained"]
  # The same index twice: the paired difference is exactly 0, CI included.
  assert out["pretrained_minus_initial"] == {"difference": 0.0,
                                             "ci95": [0.0, 0.0]}
  with pytest.raises(ValueError, match="no index 0"):
    masked_recall.before_after(store, store.tokenizer(), held, str(tmp_path),
                               3, c.data.query_len, c.data.max_masks)
