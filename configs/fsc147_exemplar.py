"""Re-export of the built-in config ``counting_jax/configs/fsc147_exemplar.py``
(``--config configs/fsc147_exemplar.py`` and ``--config fsc147_exemplar`` are the same)."""

from counting_jax.configs.fsc147_exemplar import *  # noqa: F401,F403
