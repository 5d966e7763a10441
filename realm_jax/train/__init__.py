"""realm_jax.train."""
