"""realm_jax.data."""
