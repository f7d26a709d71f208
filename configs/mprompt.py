"""Re-export of the built-in config ``counting_jax/configs/mprompt.py``
(``--config configs/mprompt.py`` and ``--config mprompt`` are the same)."""

from counting_jax.configs.mprompt import *  # noqa: F401,F403
