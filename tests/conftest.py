"""Shared pytest fixtures: ``rng`` and ``shared_data``."""

from __future__ import annotations

import os
import pathlib
import sys

import jax
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("COUNTING_JAX_SHARED", REPO.parent / "shared"))
if str(REPO) not in sys.path:  # config files: ``from configs import ...``
  sys.path.insert(0, str(REPO))


@pytest.fixture
def rng():
  return jax.random.key(0)


@pytest.fixture(scope="session")
def shared_dir():
  """``../shared`` (or $COUNTING_JAX_SHARED); skips when it is absent."""
  if not SHARED.is_dir():
    pytest.skip(f"{SHARED} not found")
  return SHARED


@pytest.fixture(scope="session")
def shared_data(shared_dir):
  """``shared_data(name)`` -> ``../shared/data/<name>``, skipping when absent."""

  def get(name: str) -> pathlib.Path:
    path = shared_dir / "data" / name
    if not path.exists():
      pytest.skip(f"../shared/data/{name} not found")
    return path

  return get
