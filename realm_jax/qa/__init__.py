"""Inference with a fine-tuned model: model.load_finetuned(config) loads it
with its frozen index; predictor.Predictor(model, tokenizer, ...) answers
batches of questions (eval and answer use both); answerer.Answerer(workdir)
is the API for applications, over a knowledge base that may change."""
from realm_jax.qa.answerer import Answer, Answerer, Evidence

__all__ = ["Answer", "Answerer", "Evidence"]
