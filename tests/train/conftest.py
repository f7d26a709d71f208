"""Fixtures shared by the training tests."""

from __future__ import annotations

import jax
import pytest


@pytest.fixture(scope="module")
def fast_compiles():
  """Tiny programs: XLA's optimisations cost more than they save here.

  Use per module with ``pytestmark = pytest.mark.usefixtures(...)``.
  """
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)
