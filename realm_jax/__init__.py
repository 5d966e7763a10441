"""realm_jax: REALM (Retrieval-Augmented Language Model Pre-Training) in JAX/Flax."""

__version__ = "0.1.0"
