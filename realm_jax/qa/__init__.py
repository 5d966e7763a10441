"""Inference with a fine-tuned model: load it with its index, predict.

`Answerer`-style use: model.load_finetuned(config) then
predictor.Predictor(model, tokenizer, ...).predict(qa_batch)."""
