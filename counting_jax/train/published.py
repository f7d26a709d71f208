"""Which published results table a run may print beside its own numbers.

A config's table (``config.published``: rows of (method, value), under the
heading ``config.published_protocol``) was measured on one data set under
one protocol, stated in ``config.published_dataset``: the fields of
``config.dataset`` it needs (e.g. ``name="vgg_cells", test_split="test",
num_train=32``). A run whose data set differs in any of them (the config
reused for a user's own folder, a smoke run on ``test[:10]``) prints no
table: numbers from another data set or protocol are not comparable.
"""

from __future__ import annotations

__all__ = ["published_table"]


def _norm(value):
  """ConfigDict placeholders and "" compare as None."""
  return None if value in (None, "") else value


def published_table(config):
  """(protocol str, rows) when ``config.published`` applies to the run's
  data set and protocol (module docstring), else None (also for a table
  that does not say what it was measured on)."""
  rows = config.get("published")
  wanted = config.get("published_dataset")
  if not rows or not wanted:
    return None
  ds = config.dataset
  for key, value in dict(wanted).items():
    if _norm(ds.get(key)) != _norm(value):
      return None
  return config.get("published_protocol", ""), list(rows)
