"""Re-export of the built-in config ``counting_jax/configs/common.py``
(``--config configs/common.py`` and ``--config common`` are the same)."""

from counting_jax.configs.common import *  # noqa: F401,F403
