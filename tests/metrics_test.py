"""Counting metrics against hand-computed values (Seg-then-Count §4.2)."""

import math

import numpy as np
import pytest

from counting_jax import metrics


def test_values_match_definitions():
  pred, true = [12.0, 7.0, 30.0], [10.0, 8.0, 25.0]
  m = metrics.counting_metrics(pred, true)
  err = np.array([2.0, 1.0, 5.0])
  assert m["mae"] == pytest.approx(err.mean())
  assert m["rmse"] == pytest.approx(math.sqrt((err ** 2).mean()))
  assert m["nae"] == pytest.approx(np.mean(err / np.array(true)))
  assert m["sre"] == pytest.approx(math.sqrt(np.mean(err ** 2 / np.array(true))))
  assert m["n"] == 3 and m["n_zero"] == 0


def test_zero_counts_excluded_from_relative_metrics():
  m = metrics.counting_metrics([1.0, 11.0], [0.0, 10.0])
  assert m["mae"] == pytest.approx(1.0)
  assert m["nae"] == pytest.approx(0.1)
  assert m["n_zero"] == 1


def test_rejects_mismatched_or_empty():
  with pytest.raises(ValueError):
    metrics.counting_metrics([1.0], [1.0, 2.0])
  with pytest.raises(ValueError):
    metrics.counting_metrics([], [])
