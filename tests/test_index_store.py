"""Index versions on disk: atomic commit, memory-mapped loading, verification
(flipped byte, truncation, other corpus) and pruning."""
import json
import os

import numpy as np
import pytest

from realm_jax.index import search, store

FINGERPRINT = "corpus-a"


def write_version(index_dir, step, emb, shard_rows=40, fingerprint=FINGERPRINT,
                  do_commit=True):
  tmp = store.tmp_path(index_dir, step)
  os.makedirs(tmp)
  shards = [store.write_shard(tmp, i, emb[lo:lo + shard_rows])
            for i, lo in enumerate(range(0, len(emb), shard_rows))]
  if not do_commit:
    return tmp
  return store.commit(index_dir, step, dim=emb.shape[1], shards=shards,
                      corpus_fingerprint=fingerprint, export={"step": step})


@pytest.fixture
def emb():
  return np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)


def test_commit_makes_a_version_visible_only_when_complete(tmp_path, emb):
  index_dir = str(tmp_path)
  tmp = write_version(index_dir, 5, emb, do_commit=False)
  assert sorted(os.listdir(tmp)) == [f"emb-0000{i}.npy" for i in range(3)]
  assert store.list_versions(index_dir) == []   # the .tmp dir is invisible
  path = write_version(index_dir, 7, emb)
  assert store.list_versions(index_dir) == [7] and store.latest_version(index_dir) == 7
  m = store.verify(path, FINGERPRINT)
  assert (m["step"], m["num_blocks"], m["dim"], m["dtype"]) == (7, 100, 8, "float32")
  assert [s["rows"] for s in m["shards"]] == [40, 40, 20]
  with pytest.raises(FileExistsError):
    store.commit(index_dir, 7, dim=8, shards=m["shards"], corpus_fingerprint="x")


def test_load_memory_maps_and_row_i_is_row_i(tmp_path, emb):
  loaded = store.load(write_version(str(tmp_path), 1, emb))
  assert loaded.shape == (100, 8) and len(loaded.shards) == 3
  assert all(isinstance(s, np.memmap) for s in loaded.shards)
  np.testing.assert_array_equal(np.asarray(loaded), emb)
  np.testing.assert_array_equal(loaded[35:85], emb[35:85])   # across shards
  assert isinstance(loaded[41:79], np.memmap)                # inside one: a view
  ids = np.array([[99, 0, 40], [39, 41, 80]])
  np.testing.assert_array_equal(loaded[ids], emb[ids])
  np.testing.assert_array_equal(loaded[::7], emb[::7])
  # Shards plug straight into a searcher.
  q = emb[:4] + 0.01
  for a, b in zip(search.ExactSearcher(loaded, row_chunk=30).search(q, 5),
                  search.ExactSearcher(emb).search(q, 5)):
    np.testing.assert_array_equal(a, b)


def test_flipped_byte_in_a_shard_is_refused(tmp_path, emb):
  path = write_version(str(tmp_path), 3, emb)
  shard = os.path.join(path, "emb-00001.npy")
  with open(shard, "r+b") as f:
    f.seek(os.path.getsize(shard) - 17)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x01]))
  with pytest.raises(store.CorruptIndexError, match=r"emb-00001.npy: sha256"):
    store.verify(path, FINGERPRINT)


def test_truncated_shard_is_refused(tmp_path, emb):
  path = write_version(str(tmp_path), 3, emb)
  shard = os.path.join(path, "emb-00002.npy")
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) - 8)
  with pytest.raises(store.CorruptIndexError, match="emb-00002.npy"):
    store.verify(path, FINGERPRINT)


def test_index_of_another_corpus_is_refused(tmp_path, emb):
  path = write_version(str(tmp_path), 3, emb, fingerprint="corpus-b")
  with pytest.raises(store.CorruptIndexError, match="built for corpus 'corpus-b'"):
    store.verify(path, FINGERPRINT)


def test_bad_manifests_are_refused_with_one_clear_message(tmp_path, emb):
  path = write_version(str(tmp_path), 3, emb)
  mpath = os.path.join(path, store.MANIFEST)
  m = json.load(open(mpath))
  m["num_blocks"] = 101
  json.dump(m, open(mpath, "w"))
  with pytest.raises(store.CorruptIndexError, match="100 rows but num_blocks is 101"):
    store.load(path)
  open(mpath, "w").write('{"step": 3, ')
  with pytest.raises(store.CorruptIndexError, match="not valid JSON"):
    store.verify(path)
  os.remove(mpath)
  with pytest.raises(store.CorruptIndexError, match="no manifest.json"):
    store.verify(path)


def test_prune_keeps_the_newest_versions(tmp_path, emb):
  index_dir = str(tmp_path)
  for step in (10, 20, 30, 40):
    write_version(index_dir, step, emb)
  write_version(index_dir, 25, emb, do_commit=False)   # superseded job
  write_version(index_dir, 50, emb, do_commit=False)   # job in progress
  os.makedirs(os.path.join(index_dir, "15.bad-1700000000"))  # refused, old
  os.makedirs(os.path.join(index_dir, "60.bad-1700000000"))  # refused, newest
  assert store.prune(index_dir, keep=2) == [10, 20]
  assert store.list_versions(index_dir) == [30, 40]
  assert sorted(os.listdir(index_dir)) == ["30", "40", "50.tmp",
                                            "60.bad-1700000000"]


@pytest.fixture
def blocks(tmp_path):
  from realm_jax.data import block_builder, demo_corpus, tokenizer
  return block_builder.build_block_store(
      demo_corpus.demo_documents(limit=30), tokenizer.minilm_tokenizer(),
      str(tmp_path / "blocks"), block_len=64, progress=False)


def _flip_tail(path):
  with open(path, "r+b") as f:
    f.seek(-3, 2)
    f.write(b"\x00\x01\x02")
  os.utime(path, ns=(10**18, 10**18))   # unlike any memo's, on any clock


def test_answer_path_verifies_a_version_once_and_catches_a_later_flip(
    tmp_path, monkeypatch, blocks):
  """open_index, as `answer` opens its index at every start: the checksums
  are checked at the first start and remembered; a byte flipped afterwards
  is still refused at the next start."""
  from realm_jax import config as config_lib
  from realm_jax.retrieval import openqa_record
  emb = np.random.default_rng(1).normal(
      size=(blocks.num_blocks, 8)).astype(np.float32)
  path = write_version(str(tmp_path / "index"), 3, emb,
                       fingerprint=blocks.fingerprint)
  index_config = config_lib.default_config().index
  index_config.searcher = "exact"
  cache = str(tmp_path / "cache")
  checked = []
  verify = store.verify
  monkeypatch.setattr(store, "verify",
                      lambda *a: checked.append(a) or verify(*a))
  openqa_record.open_index(path, blocks, index_config, cache)
  openqa_record.open_index(path, blocks, index_config, cache)
  assert len(checked) == 1                      # remembered after the first
  _flip_tail(os.path.join(path, "emb-00001.npy"))
  with pytest.raises(store.CorruptIndexError, match="emb-00001.npy"):
    openqa_record.open_index(path, blocks, index_config, cache)


def test_finetuning_takes_the_newest_intact_version(tmp_path, blocks):
  """find_index skips a corrupt newest version (as the trainer's watcher
  does), refuses a corrupt version asked for by number, and says so when no
  version is intact."""
  from realm_jax import config as config_lib
  from realm_jax.retrieval import openqa_record
  emb = np.random.default_rng(2).normal(
      size=(blocks.num_blocks, 8)).astype(np.float32)
  index_dir = str(tmp_path / "index")
  old = write_version(index_dir, 1, emb, fingerprint=blocks.fingerprint)
  new = write_version(index_dir, 2, emb, fingerprint=blocks.fingerprint)
  config = config_lib.default_config()
  config.workdir = str(tmp_path / "ft")
  config.finetune.index_dir = index_dir
  assert openqa_record.find_index(config, blocks) == new
  _flip_tail(os.path.join(new, "emb-00000.npy"))
  assert openqa_record.find_index(config, blocks) == old
  config.finetune.index_version = 2
  with pytest.raises(store.CorruptIndexError, match="2/emb-00000.npy"):
    openqa_record.find_index(config, blocks)
  config.finetune.index_version = -1
  _flip_tail(os.path.join(old, "emb-00000.npy"))
  with pytest.raises(store.CorruptIndexError, match="no intact version"):
    openqa_record.find_index(config, blocks)
