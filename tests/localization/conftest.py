"""Fixtures of the localization tests: the official reference values."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def otm_ref(shared_dir):
  """``official_values/otm.npz``: official OT-M and STEERER outputs."""
  path = shared_dir / "reference" / "official_values" / "otm.npz"
  if not path.exists():
    pytest.skip(f"{path} not found")
  return dict(np.load(path))
