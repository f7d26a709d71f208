"""Re-export of the built-in config ``counting_jax/configs/fsc147_seg_then_count.py``
(``--config configs/fsc147_seg_then_count.py`` and ``--config fsc147_seg_then_count`` are the same)."""

from counting_jax.configs.fsc147_seg_then_count import *  # noqa: F401,F403
