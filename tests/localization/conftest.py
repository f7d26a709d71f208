"""Fixtures of the localization tests: the official reference values."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def otm_ref(official_values):
  """``official_values/otm.npz``: official OT-M and STEERER outputs."""
  return dict(official_values("otm"))
