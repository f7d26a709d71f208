"""Re-export of the built-in config
``counting_jax/configs/fsc147_t2icount.py`` (``--config
configs/fsc147_t2icount.py`` and ``--config fsc147_t2icount`` are the
same)."""

from counting_jax.configs.fsc147_t2icount import *  # noqa: F401,F403
