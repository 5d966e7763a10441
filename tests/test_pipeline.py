"""Tests for realm_jax.data.pipeline: determinism, host shards, exact resume."""
import json

import grain
import numpy as np
import pytest

from realm_jax.data import block_builder
from realm_jax.data import pipeline
from realm_jax.data import tokenizer as tokenizer_lib


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)
      assert x[key].dtype == y[key].dtype


def _noisy_example(record, rng):
  # Rejects every 7th record; draws from rng so seeding shows in the output.
  if record % 7 == 0:
    return None
  return {"x": np.int64(record), "noise": rng.integers(1 << 30)}


def _dataset(seed=0, shard=None, **kwargs):
  kwargs.setdefault("read_threads", 2)
  return pipeline.build_dataset(
      list(range(50)), _noisy_example, seed=seed, batch_size=4,
      shard_options=shard or grain.sharding.NoSharding(), **kwargs)


def test_pad_or_truncate_layouts():
  ids, mask = pipeline.pad_or_truncate([7, 8, 9], 6, cls_id=1, sep_id=2,
                                       pad_id=0)
  np.testing.assert_array_equal(ids, [1, 7, 8, 9, 2, 0])
  np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 0])
  ids, _ = pipeline.pad_or_truncate([7, 8, 9, 10, 11], 5, 1, 2, 0)
  np.testing.assert_array_equal(ids, [1, 7, 8, 9, 2])
  # The title is kept whole; the body is cut to fit.
  ids, mask, seg = pipeline.pad_or_truncate_pair([5, 6], [7, 8, 9, 10], 8,
                                                 cls_id=1, sep_id=2, pad_id=0)
  np.testing.assert_array_equal(ids, [1, 5, 6, 2, 7, 8, 9, 2])
  np.testing.assert_array_equal(mask, [1] * 8)
  np.testing.assert_array_equal(seg, [0, 0, 0, 0, 1, 1, 1, 1])
  ids, mask, seg = pipeline.pad_or_truncate_pair([5], [7], 6, 1, 2, 0)
  np.testing.assert_array_equal(ids, [1, 5, 2, 7, 2, 0])
  np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 0])
  np.testing.assert_array_equal(seg, [0, 0, 0, 1, 1, 0])


def test_resume_from_saved_state_is_bitwise_identical():
  ds = _dataset(seed=3)
  it = iter(ds)
  _take(it, 5)  # n batches (crosses the 50-record epoch boundary later)
  state = json.loads(json.dumps(it.get_state()))  # as a checkpoint stores it
  expected = _take(it, 12)  # m more, into the second epoch
  resumed = iter(_dataset(seed=3))
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 12), expected)


def test_same_seed_same_batches_other_seed_other_order():
  first = _take(iter(_dataset(seed=1)), 6)
  _assert_batches_equal(_take(iter(_dataset(seed=1, read_threads=0)), 6), first)
  other = _take(iter(_dataset(seed=2)), 6)
  assert not all(np.array_equal(a["x"], b["x"]) for a, b in zip(first, other))


def test_rejected_records_are_skipped_and_epochs_reshuffled():
  batches = list(_dataset(seed=0, num_epochs=2, drop_remainder=False))
  xs = np.concatenate([b["x"] for b in batches])
  kept = [r for r in range(50) if r % 7 != 0]
  assert len(xs) == 2 * len(kept)
  first, second = xs[:len(kept)], xs[len(kept):]
  assert sorted(first) == kept and sorted(second) == kept
  assert not np.array_equal(first, second)


def test_process_shards_are_disjoint_and_cover_the_source():
  seen = []
  for index in range(3):
    shard = grain.sharding.ShardOptions(shard_index=index, shard_count=3)
    batches = list(_dataset(seed=5, shard=shard, num_epochs=1,
                            drop_remainder=False))
    seen.append(set(np.concatenate([b["x"] for b in batches]).tolist()))
  assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
  assert set().union(*seen) == {r for r in range(50) if r % 7 != 0}
  # The default is grain's ShardByJaxProcess: one process reads everything.
  default = list(pipeline.build_dataset(
      list(range(50)), _noisy_example, seed=5, batch_size=4, num_epochs=1,
      drop_remainder=False, read_threads=0))
  assert sum(len(b["x"]) for b in default) == 42


@pytest.fixture(scope="module")
def tokenizer():
  return tokenizer_lib.minilm_tokenizer()


@pytest.fixture(scope="module")
def block_store(tmp_path_factory, tokenizer):
  docs = [{"title": f"Town {i}",
           "text": " ".join(f"Town {i} has {j + 2} bridges and {i + j} parks."
                            for j in range(1 + i % 4))}
          for i in range(16)]
  path = str(tmp_path_factory.mktemp("store") / "blocks")
  return block_builder.build_block_store(docs, tokenizer, path, block_len=48,
                                  shard_rows=8, max_title_tokens=8,
                                  progress=False)


def test_ict_pairs_follow_orqa_layout(block_store, tokenizer):
  ds = pipeline.ict_dataset(block_store, tokenizer, seed=0, batch_size=8,
                            query_len=16, read_threads=0)
  batches = _take(iter(ds), 25)
  assert batches[0]["query_ids"].shape == (8, 16)
  assert batches[0]["block_ids"].shape == (8, 48)
  removed = np.concatenate([b["query_removed"] for b in batches])
  assert 0.8 < removed.mean() < 0.98  # remove_prob=0.9 over 200 draws
  cls, sep = tokenizer.cls_id, tokenizer.sep_id
  for b in batches[:3]:
    for i in range(8):
      row = int(b["block_row"][i])
      query = b["query_ids"][i][b["query_mask"][i] == 1]
      assert query[0] == cls and query[-1] == sep
      sentence = query[1:-1].tolist()
      sentences = [block_store.body_ids(row)[s:l].tolist()
                   for s, l in block_store.sentence_bounds(row)]
      assert sentence in sentences
      block = b["block_ids"][i][b["block_mask"][i] == 1]
      title_len = int(block_store.title_len[row])
      np.testing.assert_array_equal(block[:title_len + 2],
                                    block_store.tokens[row][:title_len + 2])
      body = block[title_len + 2:-1].tolist()
      kept = [s for s in sentences
              if s != sentence or not b["query_removed"][i]]
      expected = [t for s in kept for t in s]
      assert body == expected
      seg = b["block_segment_ids"][i]
      assert seg[:title_len + 2].sum() == 0
      assert seg[title_len + 2:len(block)].all()


def test_ict_never_removes_the_only_sentence(block_store, tokenizer):
  ds = pipeline.ict_dataset(block_store, tokenizer, seed=1, batch_size=16,
                            query_len=16, remove_prob=1.0, read_threads=0)
  for b in _take(iter(ds), 3):
    for row in b["block_row"]:
      assert len(block_store.sentence_bounds(int(row))) > 1


def test_ict_resume(block_store, tokenizer):
  make = lambda: pipeline.ict_dataset(block_store, tokenizer, seed=4,
                                      batch_size=4, query_len=16)
  it = iter(make())
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 4)
  resumed = iter(make())
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 4), expected)


QA = [{"question": f"how many bridges in town {i}",
       "answer": [str(i + 2), "x y"]} for i in range(10)]


def test_qa_batches_hold_tokens_and_strings(tokenizer):
  ds = pipeline.qa_dataset(QA, tokenizer, seed=0, batch_size=4,
                           question_len=12, max_answers=3, max_answer_len=1,
                           train=False, read_threads=0)
  batches = list(ds)
  assert [len(b["example_index"]) for b in batches] == [4, 4, 2]
  b = batches[0]
  np.testing.assert_array_equal(b["example_index"], [0, 1, 2, 3])
  q = tokenizer.encode(QA[1]["question"]).ids
  np.testing.assert_array_equal(
      b["question_ids"][1][:len(q) + 2],
      [tokenizer.cls_id] + q.tolist() + [tokenizer.sep_id])
  assert b["question_mask"][1].sum() == len(q) + 2
  assert b["answers"][1] == ("3", "x y")
  assert b["question"][1] == QA[1]["question"]
  # "3" is one token; "x y" is two tokens > max_answer_len=1; no third answer.
  np.testing.assert_array_equal(b["answer_len"][1], [1, 0, 0])
  assert b["answer_ids"][1, 0, 0] == tokenizer.token_to_id("3")


def test_qa_eval_sees_every_example_once_across_hosts(tokenizer):
  seen = []
  for index in range(3):
    shard = grain.sharding.ShardOptions(shard_index=index, shard_count=3)
    for b in pipeline.qa_dataset(QA, tokenizer, seed=0, batch_size=2,
                                 train=False, shard_options=shard,
                                 read_threads=0):
      seen.extend(b["example_index"].tolist())
  assert sorted(seen) == list(range(10))


def test_qa_train_resume(tokenizer):
  make = lambda: pipeline.qa_dataset(QA, tokenizer, seed=9, batch_size=3)
  it = iter(make())
  _take(it, 2)
  state = it.get_state()
  expected = _take(it, 5)
  resumed = iter(make())
  resumed.set_state(state)
  got = _take(resumed, 5)
  for x, y in zip(got, expected):
    np.testing.assert_array_equal(x["example_index"], y["example_index"])
    np.testing.assert_array_equal(x["question_ids"], y["question_ids"])


def _query_records():
  """Sentences with char spans; some the masker must skip."""
  records = []
  for i in range(30):
    text = f"In {1900 + i} the mayor of Town {i} opened bridge number {i % 5}."
    year = text.index(str(1900 + i))
    town = text.index(f"Town {i}")
    spans = [(year, year + 4), (town, town + len(f"Town {i}"))]
    if i % 6 == 0:
      spans = []  # no salient span: skipped
    records.append({"text": text, "spans": spans, "source_uid": f"uid{i:02d}"})
  # A span past the 12-token query window: skipped whenever it is drawn.
  long_text = " ".join(["word"] * 20) + " Paris"
  records.append({"text": long_text, "spans": [(len(long_text) - 5,
                                                len(long_text))],
                  "source_uid": "uid-long"})
  return records


def _pretraining(tokenizer, seed=0, **kwargs):
  kwargs.setdefault("read_threads", 2)
  return pipeline.pretraining_dataset(
      _query_records(), tokenizer, seed=seed, batch_size=4, mask_fn="salient",
      query_len=12, max_masks=3, **kwargs)


def test_pretraining_batches_mask_one_salient_span(tokenizer):
  batches = list(_pretraining(tokenizer, num_epochs=1,
                              shard_options=grain.sharding.NoSharding()))
  uids = np.concatenate([b["source_uid"] for b in batches]).tolist()
  # 25 usable records, batches of 4: one record falls in the dropped remainder.
  assert len(uids) == 24 and len(set(uids)) == 24
  assert set(uids) <= {f"uid{i:02d}" for i in range(30) if i % 6}
  b = batches[0]
  assert b["query_ids"].shape == (4, 12) and b["mlm_positions"].shape == (4, 3)
  assert b["mlm_weights"].dtype == np.float32
  for i in range(4):
    ids, weights = b["query_ids"][i], b["mlm_weights"][i]
    positions = b["mlm_positions"][i][weights > 0]
    assert (ids[positions] == tokenizer.mask_id).all()
    assert (ids == tokenizer.mask_id).sum() == len(positions)
    record = _query_records()[int(b["source_uid"][i][3:])]
    labels = tokenizer.decode(b["mlm_labels"][i][weights > 0])
    assert labels in [record["text"][s:l].lower() for s, l in record["spans"]]


def test_pretraining_resume_is_bitwise_identical(tokenizer):
  it = iter(_pretraining(tokenizer, seed=7))
  _take(it, 4)
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 9)  # crosses into the second epoch
  resumed = iter(_pretraining(tokenizer, seed=7))
  resumed.set_state(state)
  _assert_batches_equal(_take(resumed, 9), expected)


def test_pretraining_hosts_read_disjoint_records(tokenizer):
  uids = []
  for index in range(2):
    shard = grain.sharding.ShardOptions(shard_index=index, shard_count=2)
    uids.append({u for b in _pretraining(tokenizer, num_epochs=1,
                                         shard_options=shard)
                 for u in b["source_uid"].tolist()})
  assert uids[0] and uids[1] and not uids[0] & uids[1]


def test_pretraining_refuses_unknown_strategy(tokenizer):
  with pytest.raises(ValueError, match="unknown masking strategy 'whole_word'"):
    pipeline.pretraining_dataset(_query_records(), tokenizer, 0, 4,
                                 mask_fn="whole_word")


def test_iterator_state_round_trips_through_an_orbax_checkpoint(tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  it = iter(_dataset(seed=11))
  _take(it, 3)
  manager = ocp.CheckpointManager(str(tmp_path))
  # grain's handler writes one process_<i>-of-<n>.json per host.
  manager.save(3, args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  assert (tmp_path / "3" / "data" / "process_0-of-1.json").exists()
  expected = _take(it, 4)
  resumed = iter(_dataset(seed=11))
  manager.restore(3, args=ocp.args.Composite(
      data=grain.checkpoint.CheckpointRestore(resumed)))
  _assert_batches_equal(_take(resumed, 4), expected)
  manager.close()
