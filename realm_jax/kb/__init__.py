"""Knowledge bases: a corpus of your own, indexed and kept up to date
(task=index), answered by a fine-tuned model."""
