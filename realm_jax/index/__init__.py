"""realm_jax.index."""
