"""Start training from converted PyTorch weights (``counting-jax convert``)."""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["merge_pretrained", "load_pretrained"]


def _flat(tree, prefix=()):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, prefix + (k,)))
    return out
  return {prefix: tree}


def merge_pretrained(variables: dict, pretrained: dict, *,
                     name: str = "pretrained") -> tuple[dict, str]:
  """Replaces model variables by pretrained ones.

  ``pretrained`` ({'params', ['batch_stats']}) is either the variables of the
  whole model (a converted counter checkpoint) or of its ``backbone``
  sub-module (a converted ImageNet backbone); every one of its arrays must
  exist in ``variables`` with the same shape.

  Returns:
    (merged variables, "model" or "backbone").

  Raises:
    ValueError: naming the keys that are missing from the model or differ in
      shape.
  """
  flat_model = {(c,) + k: v for c in variables
                for k, v in _flat(variables[c]).items()}
  flat_pre = {(c,) + k: v for c in pretrained
              for k, v in _flat(pretrained[c]).items()}
  for where, prefix in (("model", ()), ("backbone", ("backbone",))):
    mapped = {(k[0],) + prefix + k[1:]: v for k, v in flat_pre.items()}
    if all(k in flat_model for k in mapped):
      bad = [f"{'/'.join(k)}: {np.shape(v)} vs {flat_model[k].shape}"
             for k, v in mapped.items() if np.shape(v) != flat_model[k].shape]
      if bad:
        raise ValueError(f"{name}: shapes differ from the model's: "
                         + "; ".join(bad[:10]))
      merged = dict(flat_model)
      merged.update({k: np.asarray(v, flat_model[k].dtype)
                     for k, v in mapped.items()})
      out = {}
      for key, value in merged.items():
        node = out
        for part in key[:-1]:
          node = node.setdefault(part, {})
        node[key[-1]] = value
      return out, where
  missing = sorted("/".join(k) for k in flat_pre
                   if k not in flat_model)[:10]
  raise ValueError(f"{name} matches neither the model nor its backbone; "
                   f"e.g. not in the model: {missing}")


def load_pretrained(state, path):
  """The train state with params/batch_stats from the converted checkpoint
  at ``path`` (see :func:`merge_pretrained`); returns (state, where)."""
  from counting_jax.convert import orbax_io  # pylint: disable=g-import-not-at-top
  pretrained = orbax_io.load_variables(path)
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  merged, where = merge_pretrained(jax.device_get(variables), pretrained,
                                   name=str(path))
  return state.replace(params=merged["params"],
                       batch_stats=merged.get("batch_stats",
                                              state.batch_stats)), where
