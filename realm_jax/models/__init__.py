"""Flax modules for REALM: the BERT encoder, retriever, readers and losses."""
