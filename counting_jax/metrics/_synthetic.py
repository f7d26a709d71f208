"""Counting error on Seg-then-Count's synthetic two-class images.

Xu, Le & Samaras, WACV 2025, §4.2: an image holds the class of interest in
one half only; with y_i the true count, ŷ_in the predicted count inside the
half of interest and ŷ_out the predicted count in the other half, the error
is ε_i = |y_i - ŷ_in| + ŷ_out, and MAE, RMSE, NAE, SRE are computed from it
as for ordinary images (``counting_metrics``).
"""

from __future__ import annotations

import numpy as np

from counting_jax.metrics._counting import error_summary

__all__ = ["half_counts", "synthetic_counting_metrics"]


def half_counts(density, split_x: int, half: int, *,
                stride: int = 1) -> tuple[float, float]:
  """(ŷ_in, ŷ_out) of one density map.

  Args:
    density: float [h, w] count units.
    split_x: the boundary between the halves, input pixels (a multiple of
      ``stride``).
    half: 0 when the class of interest is on the left, 1 on the right.
    stride: input pixels per density pixel.

  Raises:
    ValueError: when ``split_x`` is not a multiple of ``stride``, or
      ``half`` is not 0 / 1.
  """
  if split_x % stride:
    raise ValueError(f"split_x {split_x} is not a multiple of stride "
                     f"{stride}")
  if half not in (0, 1):
    raise ValueError(f"half must be 0 (left) or 1 (right), got {half}")
  d = np.asarray(density, np.float64)
  c = split_x // stride
  left, right = float(d[:, :c].sum()), float(d[:, c:].sum())
  return (right, left) if half else (left, right)


def synthetic_counting_metrics(pred_in, pred_out, true_counts) -> dict:
  """MAE, RMSE, NAE, SRE with ε_i = |y_i - ŷ_in| + ŷ_out.

  Args:
    pred_in: float [n] predicted counts in the half of interest.
    pred_out: float [n] predicted counts in the other half.
    true_counts: float [n] true counts of the class of interest.

  Returns:
    dict ``mae``, ``rmse``, ``nae``, ``sre`` (NAE / SRE over y_i > 0), ``n``,
    ``n_zero``.

  Raises:
    ValueError: on empty or mismatched inputs.
  """
  pin = np.asarray(pred_in, np.float64).ravel()
  pout = np.asarray(pred_out, np.float64).ravel()
  true = np.asarray(true_counts, np.float64).ravel()
  if not (pin.shape == pout.shape == true.shape) or true.size == 0:
    raise ValueError(f"pred_in {pin.shape}, pred_out {pout.shape} and "
                     f"true_counts {true.shape} must be non-empty and equal")
  return error_summary(np.abs(true - pin) + pout, true)
