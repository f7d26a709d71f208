"""A run folder remembers its config: save, load, compare.

``counting-jax train`` writes the resolved config (the config file's
``get_config(arg)`` with every command-line override applied) to
``<workdir>/config.py`` before the first step. The file is an ml_collections
config file itself, so ``eval``, ``predict`` and a resumed ``train`` load it
with ``--config <workdir>/config.py`` (what the command does when ``--config``
is not given) and overrides still apply. Values are Python literals (tuples
stay tuples, floats round-trip exactly); an unset typed field
(``placeholder(int)``) stays a placeholder of its type.

:func:`differences` lists the dotted names of the fields in which two configs
differ, so a command given a conflicting ``--config`` can name them in one
line instead of failing later in a checkpoint restore.
"""

from __future__ import annotations

import ast
import pathlib
import pprint

import ml_collections

__all__ = ["CONFIG_FILE", "save", "load", "path", "differences", "flat_fields",
           "has_checkpoint", "RUNTIME_FIELDS"]

CONFIG_FILE = "config.py"

# Fields a command may change on an existing run without changing what was
# trained (where to find data, what to print, how to evaluate); prefixes
# match sub-fields. Any other difference is a conflict.
RUNTIME_FIELDS = {
    "train": ("quiet", "dataset.data_dir", "dataset.manual_dir",
              "input.eval_batch_size", "eval_tiling", "num_panels",
              "panel_sigma", "published", "published_protocol",
              "xla_cpu_ynn_fusion_type"),
    "eval": ("quiet", "dataset", "input.eval_batch_size", "eval_tiling",
             "num_panels", "panel_sigma", "published", "published_protocol",
             "published_dataset",
             "xla_cpu_ynn_fusion_type", "init_checkpoint", "total_steps",
             "log_every", "checkpoint_every"),
}
RUNTIME_FIELDS["predict"] = RUNTIME_FIELDS["eval"]
RUNTIME_FIELDS["localize"] = RUNTIME_FIELDS["eval"]
RUNTIME_FIELDS["pseudo-masks"] = RUNTIME_FIELDS["eval"] + ("pseudo_masks",)

_HEADER = '''"""Resolved config of this run, written by ``counting-jax train``.

Loaded by ``counting-jax eval/predict/train --workdir`` of this folder when
``--config`` is not given; overrides (``--config.x=...``) still apply.
"""

import ml_collections
from ml_collections.config_dict import placeholder

'''


def path(workdir) -> pathlib.Path:
  """``<workdir>/config.py``."""
  return pathlib.Path(workdir) / CONFIG_FILE


class _Raw:
  """Prints as its text inside ``pprint`` output."""

  def __init__(self, text):
    self.text = text

  def __repr__(self):
    return self.text


def _literal(config):
  """ConfigDict -> nested dict of Python literals, typed ``None`` fields as
  ``placeholder(type)`` markers."""
  out = {}
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      out[key] = _literal(value)
    elif value is None and config.get_type(key) not in (type(None), object):
      out[key] = _Raw(f"placeholder({config.get_type(key).__name__})")
    else:
      out[key] = value
  return out


def save(config, workdir) -> pathlib.Path:
  """Writes ``config`` to ``<workdir>/config.py`` (the folder must exist);
  returns the path.

  Raises:
    ValueError: naming the field when a value is not a Python literal (the
      file would not load back).
  """
  bad = []
  for name, value in _flat(config).items():
    try:
      if ast.literal_eval(repr(value)) != value:
        bad.append(name)
    except (ValueError, SyntaxError):
      bad.append(name)
  if bad:
    raise ValueError(f"config fields {bad} are not Python literals; the run "
                     "folder cannot remember them")
  tree = _literal(config)
  text = pprint.pformat(tree, width=76, sort_dicts=False)
  body = (_HEADER + "\ndef get_config():\n  return _to_config(\n"
          + "\n".join("      " + line for line in text.splitlines())
          + ")\n\n\n" + _TO_CONFIG_SOURCE)
  loaded = _load_text(body, "<config.py>")
  assert not differences(config, loaded), differences(config, loaded)
  out = path(workdir)
  tmp = out.with_suffix(".tmp")
  tmp.write_text(body, encoding="utf-8")
  tmp.replace(out)
  return out


_TO_CONFIG_SOURCE = '''def _to_config(tree):
  return ml_collections.ConfigDict(
      {k: _to_config(v) if isinstance(v, dict) else v
       for k, v in tree.items()})
'''


def _load_text(text, name):
  scope = {}
  exec(compile(text, name, "exec"), scope)  # pylint: disable=exec-used
  return scope["get_config"]()


def load(workdir):
  """The config saved in ``workdir``, or None when there is none."""
  p = path(workdir)
  if not p.is_file():
    return None
  return _load_text(p.read_text(encoding="utf-8"), str(p))


def flat_fields(config) -> dict:
  """{dotted field name: value} of a config, sub-configs flattened (an empty
  one as ``{}``), lists as tuples."""
  return _flat(config)


def _flat(value, prefix=""):
  if isinstance(value, (ml_collections.ConfigDict, dict)):
    out = {}
    for key in value.keys():
      out.update(_flat(value[key], f"{prefix}{key}."))
    if not out and prefix:
      out[prefix[:-1]] = {}
    return out
  if isinstance(value, list):
    value = tuple(value)
  return {prefix[:-1]: value}


def differences(a, b, *, ignore=()) -> list[str]:
  """Sorted dotted names of the fields whose values differ between configs
  ``a`` and ``b`` (a field present in only one counts), leaving out names
  equal to or below one of ``ignore``."""
  fa, fb = _flat(a), _flat(b)
  names = sorted(k for k in set(fa) | set(fb)
                 if fa.get(k, _MISSING) != fb.get(k, _MISSING))
  # An emptied sub-config shows as its name and its former fields: keep one.
  names = [k for k in names if not any(k.startswith(n + ".") for n in names)]
  return [k for k in names
          if not any(k == p or k.startswith(p + ".") for p in ignore)]


_MISSING = object()


def has_checkpoint(workdir) -> bool:
  """Whether ``<workdir>/checkpoints`` holds a finished orbax step folder
  (a number; orbax writes unfinished ones under a temporary name)."""
  ckpt = pathlib.Path(workdir) / "checkpoints"
  return ckpt.is_dir() and any(p.name.isdigit() and p.is_dir()
                               for p in ckpt.iterdir())
