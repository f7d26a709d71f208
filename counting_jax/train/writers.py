"""Scalar logs as JSON lines and TensorBoard event files."""

from __future__ import annotations

import json
import math
import pathlib

__all__ = ["MetricWriter", "rewind_jsonl"]


def rewind_jsonl(workdir, step: int, *, drop_prefixes=("test/",)) -> int:
  """Before resuming at ``step``: drops the ``metrics.jsonl`` rows of later
  steps (logged by the killed run after its last checkpoint, and logged
  again by the resumed one) and rows with a key starting with one of
  ``drop_prefixes`` (evaluations, rerun after training). Returns the number
  of rows dropped."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.is_file():
    return 0
  lines = path.read_text(encoding="utf-8").splitlines()
  keep = []
  for line in lines:
    try:
      row = json.loads(line)
    except json.JSONDecodeError:  # a line cut by the kill
      continue
    if row.get("step", 0) <= step and not any(
        k.startswith(p) for k in row for p in drop_prefixes):
      keep.append(line)
  path.write_text("".join(l + "\n" for l in keep), encoding="utf-8")
  return len(lines) - len(keep)


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
