"""Fixtures for the official loss values in ../shared/reference/official_values."""

import json

import numpy as np
import pytest


@pytest.fixture(scope="session")
def official_cases(official_values):
  """``official_cases(name, extra=False)`` -> (npz, meta, case names, points
  f32[B, N, 2] padded with zeros, point_mask bool[B, N]) of ``<name>.npz``;
  ``extra`` adds ``meta["extra_cases"]``. Skips when the file is absent."""

  def load(name: str, extra: bool = False):
    z = official_values(name)
    meta = json.loads(str(z["meta_json"]))
    names = meta["cases"] + (meta["extra_cases"] if extra else [])
    n = max(len(z[f"{c}/points"]) for c in names)
    pts = np.zeros((len(names), n, 2), np.float32)
    mask = np.zeros((len(names), n), bool)
    for b, c in enumerate(names):
      m = len(z[f"{c}/points"])
      pts[b, :m] = z[f"{c}/points"]
      mask[b, :m] = True
    return z, meta, names, pts, mask

  return load
