"""The command line as a user meets it, where nothing is computed: help,
the config command, and mistakes that must end in one line naming the
argument or file, before any heavy import or model building."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("jax", "flax", "tensorflow_datasets", "orbax", "grain", "optax")

# Runs main.main(argv) and reports its exit status and the heavy modules it
# imported (none may be needed to print help or refuse bad input).
_PROBE = """
import json, sys
from counting_jax import main
rc = main.main(json.loads(sys.argv[1]))
heavy = sorted(m for m in {heavy} if m in sys.modules)
print("PROBE", json.dumps([rc, heavy]))
"""


def _probe(*argv, tmp_path):
  env = dict(os.environ, COUNTING_JAX_DATA_DIR=str(tmp_path / "tfds"))
  proc = subprocess.run(
      [sys.executable, "-c", _PROBE.format(heavy=HEAVY), json.dumps(argv)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  line = [l for l in proc.stdout.splitlines() if l.startswith("PROBE ")]
  assert line, proc.stderr[-2000:]
  rc, heavy = json.loads(line[-1][6:])
  return rc, heavy, proc.stdout, proc.stderr


def _one_error_line(stderr, *needles):
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert len(lines) == 1, stderr
  assert lines[0].startswith("counting-jax ") and "error:" in lines[0]
  for n in needles:
    assert n in lines[0], (n, lines[0])
  assert "Traceback" not in stderr


def test_help_lists_the_commands_without_heavy_imports(tmp_path):
  rc, heavy, out, _ = _probe("--help", tmp_path=tmp_path)
  assert rc == 0 and heavy == []
  for command in ("train", "eval", "predict", "config", "convert"):
    assert f"  {command} " in out


def test_command_help_lists_its_own_flags_only(tmp_path):
  rc, heavy, out, _ = _probe("predict", "--help", tmp_path=tmp_path)
  assert rc == 0 and heavy == []
  flags = sorted(l.split("=")[0].strip() for l in out.splitlines()
                 if l.startswith("  --"))
  assert flags == ["--config", "--debug", "--exemplars", "--images", "--out",
                   "--text", "--workdir"]
  rc, _, out, _ = _probe("train", "--help", tmp_path=tmp_path)
  assert "--images" not in out and "--coordinator" in out


def test_config_command_prints_fields_and_defaults(tmp_path):
  rc, heavy, out, _ = _probe("config", "cells:smoke=True", tmp_path=tmp_path)
  assert rc == 0 and heavy == []
  assert "draw: seed of the draw" in out  # the config's arguments
  assert "  total_steps = 6\n" in out and "  input.crop_size = (32, 32)" in out
  rc, _, out, _ = _probe("config", str(REPO / "configs" / "crowd_shb.py"),
                         tmp_path=tmp_path)
  assert rc == 0 and "  init_checkpoint = ''" in out


@pytest.mark.parametrize("argv,needles", [
    (("train", "--config", "no_such.py", "--workdir", "{tmp}/run"),
     ("--config", "no_such.py", "cells, crowd_shb")),
    (("train", "--config", "cells", "--workdir", "{tmp}/run",
      "--config.total_step=10"),
     ("--config.total_step=10", "total_steps")),
    (("train", "--config", "cells:smok=True", "--workdir", "{tmp}/run"),
     ("smok", "valid")),
    (("train", "--config", "cells", "--workdir", "{tmp}/run",
      "--config.dataset.manual_dir={tmp}/nowhere"),
     ("manual_dir", "nowhere")),
    (("train", "--config", "cells", "--workdir", "{tmp}/run", "--wrkdir=x"),
     ("wrkdir",)),
    (("eval", "--workdir", "{tmp}/run"), ("--config", "config.py")),
    (("eval", "--config", "cells", "--workdir", "{tmp}/run"),
     ("--workdir", "run folder not found")),
    (("predict", "--config", "cells", "--workdir", "{tmp}/emptyrun",
      "--images", "x", "--out", "y"),
     ("no checkpoint in", "emptyrun")),
])
def test_user_errors_are_one_line_and_need_no_computation(argv, needles,
                                                          tmp_path):
  (tmp_path / "emptyrun").mkdir()
  argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
  rc, heavy, _, err = _probe(*argv, tmp_path=tmp_path)
  assert rc == 1 and heavy == []
  _one_error_line(err, *needles)
  assert not (tmp_path / "run").exists()  # no run folder left behind


def test_debug_shows_the_traceback(tmp_path):
  rc, _, _, err = _probe("train", "--config", "nope", "--workdir",
                         str(tmp_path / "r"), "--debug", tmp_path=tmp_path)
  assert rc == 1 and "Traceback" in err and "UserError" in err


def test_wrong_manual_dir_layout_fails_before_a_run_folder(tmp_path):
  """Preparing the data is the one check that needs tfds; it runs before
  the run folder is made and names the folder."""
  (tmp_path / "cells").mkdir()
  (tmp_path / "cells" / "readme.txt").write_text("not the cells")
  rc, _, _, err = _probe(
      "train", "--config", "cells", "--workdir", str(tmp_path / "run"),
      f"--config.dataset.manual_dir={tmp_path / 'cells'}", tmp_path=tmp_path)
  assert rc == 1
  last = err.strip().splitlines()[-1]
  assert "error: data set vgg_cells" in last and str(tmp_path / "cells") in last
  assert not (tmp_path / "run").exists()


def test_unknown_command_prints_usage(tmp_path):
  rc, heavy, _, err = _probe("fly", tmp_path=tmp_path)
  assert rc == 2 and heavy == []
  assert "unknown command 'fly'" in err and "commands:" in err
