"""The index and block store a fine-tuned model reads, as its fine-tuning
workdir recorded them (finetuned.py), shared by training and inference."""
