"""Inference with a fine-tuned model: model.load_finetuned(config) loads it
with its frozen index; predictor.Predictor(model, tokenizer, ...) answers
batches of questions (eval and answer use both)."""
