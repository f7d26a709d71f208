"""Scalar logs as JSON lines and TensorBoard event files."""

from __future__ import annotations

import json
import math
import pathlib

__all__ = ["MetricWriter"]


class MetricWriter:
  """Appends ``{"step": s, **scalars}`` to ``<workdir>/metrics.jsonl`` and
  writes the same scalars to TensorBoard (``<workdir>/tb``)."""

  def __init__(self, workdir, *, tensorboard: bool = True):
    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._jsonl = open(self.workdir / "metrics.jsonl", "a", encoding="utf-8")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(str(self.workdir / "tb"))

  def write_scalars(self, step: int, scalars: dict, *, prefix: str = ""):
    row = {"step": int(step)}
    for k, v in scalars.items():
      v = float(v)
      row[prefix + k] = v if math.isfinite(v) else str(v)
      if self._tb is not None:
        self._tb.add_scalar(prefix + k, v, int(step))
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()

  def close(self):
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
