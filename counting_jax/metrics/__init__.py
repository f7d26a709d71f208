"""Metrics: counting (MAE, RMSE, NAE, SRE) and localization (NWPU-Crowd).

The public names of the former ``counting_jax/metrics.py`` stay importable
from here (``from counting_jax import metrics; metrics.counting_metrics``).
"""

from __future__ import annotations

from counting_jax.metrics._counting import counting_metrics
from counting_jax.metrics._synthetic import (
    half_counts,
    synthetic_counting_metrics,
)
from counting_jax.metrics._localization import (
    NUM_LEVELS,
    NWPU_VAL_IDS,
    localization_metrics_fixed_radius,
    match_points,
    nwpu_localization_metrics,
)
from counting_jax.metrics.nwpu_files import (
    NwpuGroundTruth,
    read_nwpu_gt,
    read_nwpu_pred,
    write_nwpu_gt,
    write_nwpu_pred,
)

__all__ = [
    "NUM_LEVELS",
    "NwpuGroundTruth",
    "NWPU_VAL_IDS",
    "counting_metrics",
    "half_counts",
    "synthetic_counting_metrics",
    "localization_metrics_fixed_radius",
    "match_points",
    "nwpu_localization_metrics",
    "read_nwpu_gt",
    "read_nwpu_pred",
    "write_nwpu_gt",
    "write_nwpu_pred",
]
