"""Counting metrics: MAE, RMSE, NAE, SRE.

Definitions (Xu, Le & Samaras, "Learning to Count from Pseudo-Labeled
Segmentation", §4.2), with ε_i = |y_i - ŷ_i| over n test images:
MAE = mean ε_i; RMSE = sqrt(mean ε_i²); NAE = mean ε_i / y_i;
SRE = sqrt(mean ε_i² / y_i). NAE and SRE are undefined for y_i = 0; such
images are left out of those two (and counted in ``n_zero``), never divided
by zero.
"""

from __future__ import annotations

import numpy as np

__all__ = ["counting_metrics"]


def counting_metrics(pred_counts, true_counts) -> dict[str, float]:
  """MAE, RMSE, NAE and SRE of predicted vs true counts.

  Args:
    pred_counts: float [n] predicted counts.
    true_counts: float [n] ground-truth counts.

  Returns:
    dict with ``mae``, ``rmse``, ``nae``, ``sre`` (floats), ``n`` and
    ``n_zero`` (images with y_i = 0, excluded from NAE and SRE).

  Raises:
    ValueError: if the two arrays differ in shape or are empty.
  """
  pred = np.asarray(pred_counts, np.float64).ravel()
  true = np.asarray(true_counts, np.float64).ravel()
  if pred.shape != true.shape or pred.size == 0:
    raise ValueError(f"pred_counts {pred.shape} and true_counts {true.shape} "
                     "must be non-empty and of the same shape")
  return error_summary(np.abs(true - pred), true)


def error_summary(err, true) -> dict[str, float]:
  """MAE, RMSE, NAE, SRE, ``n`` and ``n_zero`` of per-image errors ε_i.

  Args:
    err: float64 [n] errors ε_i >= 0 (count units).
    true: float64 [n] true counts y_i (NAE and SRE over y_i > 0; NaN when
      every y_i is 0).
  """
  pos = true > 0
  out = {"mae": float(err.mean()), "rmse": float(np.sqrt((err ** 2).mean())),
         "n": int(err.size), "n_zero": int((~pos).sum())}
  if pos.any():
    out["nae"] = float((err[pos] / true[pos]).mean())
    out["sre"] = float(np.sqrt((err[pos] ** 2 / true[pos]).mean()))
  else:
    out["nae"] = out["sre"] = float("nan")
  return out
