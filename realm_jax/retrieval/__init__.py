"""The index and block store a fine-tuned model reads, as its fine-tuning
workdir recorded them (openqa_record.py), shared by training and inference."""
