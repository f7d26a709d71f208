"""counting_jax."""
