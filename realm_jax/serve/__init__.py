"""HTTP serving of a knowledge base or fine-tuning workdir (task=serve): a
JSON API with dynamic batching and a web page (the [serve] extra)."""
