"""Re-export of the built-in config ``counting_jax/configs/crowd_shb.py``
(``--config configs/crowd_shb.py`` and ``--config crowd_shb`` are the same)."""

from counting_jax.configs.crowd_shb import *  # noqa: F401,F403
