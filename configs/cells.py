"""Re-export of the built-in config ``counting_jax/configs/cells.py``
(``--config configs/cells.py`` and ``--config cells`` are the same)."""

from counting_jax.configs.cells import *  # noqa: F401,F403
