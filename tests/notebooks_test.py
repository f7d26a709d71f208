"""Runs every ``notebooks/*.ipynb`` top to bottom; any error fails the test.

The notebooks assert the identities they derive, so a broken derivation (or a
broken library function they check) fails here. Each notebook is executed in
memory with nbclient on the ``python3`` kernel, which jupyter_client resolves
to ipykernel in the interpreter running pytest (its "python" argv is replaced
by ``sys.executable``), so a fresh ``.venv`` with the ``test`` extra suffices.
Nothing is written into the repository: figures, the kernel's connection file
and IPython's history go to ``tmp_path``.
"""

from __future__ import annotations

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ("pml_proximal_targets", "gl_count_loss_gradient",
            "bl_vs_pml_background")
CELL_TIMEOUT_S = 300  # generous: CI machines may be shared (~15 s idle)
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))


def test_expected_notebooks_exist():
  names = {p.stem for p in PATHS}
  assert set(EXPECTED) <= names, f"missing: {set(EXPECTED) - names}"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_committed_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      assert not cell.outputs, f"{path.name} cell {i} has outputs"
      assert cell.execution_count is None, f"{path.name} cell {i}"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_runs_top_to_bottom(path, tmp_path, monkeypatch):
  monkeypatch.setenv("COUNTING_JAX_FIGURES", str(tmp_path / "figures"))
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
  monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=CELL_TIMEOUT_S, startup_timeout=120, kernel_name="python3",
      allow_errors=False, resources={"metadata": {"path": str(NOTEBOOKS)}})
  client.execute()  # raises CellExecutionError on the first failing cell
  errors = [o for c in nb.cells if c.cell_type == "code"
            for o in c.outputs if o.output_type == "error"]
  assert not errors
  figures = list((tmp_path / "figures").glob("*.png"))
  assert figures, "the notebook saved no figure"
