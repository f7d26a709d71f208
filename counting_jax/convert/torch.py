"""Generic PyTorch state_dict -> Flax variables conversion, shape-checked.

A key map (one module per model family: ``vgg_keys``, ``resnet_keys``,
``hrnet_keys``) lists :class:`Rule` s, each taking one PyTorch tensor to one
Flax variable, built with :func:`conv_rules`, :func:`bn_rules` and
:func:`linear_rules`. :func:`apply_rules` converts a loaded state_dict with
them and checks it against the model's abstract variables
(``jax.eval_shape`` of ``model.init``):

* conv weight [O, I, kh, kw] (OIHW) -> ``kernel`` [kh, kw, I, O] (HWIO);
* linear weight [out, in] -> Dense ``kernel`` [in, out];
* BatchNorm ``weight``/``bias`` -> params ``scale``/``bias``,
  ``running_mean``/``running_var`` -> batch_stats ``mean``/``var``;
  ``num_batches_tracked`` is dropped (eps 1e-5 in both frameworks;
  PyTorch momentum m is Flax momentum 1 - m, a module attribute);
* every tensor is cast to float32.

It refuses (``ValueError``) a checkpoint with missing keys, unexpected keys
(outside the key map's ``ignore`` prefixes, e.g. an ImageNet classifier) or
tensors whose shape does not match the model, listing all of them.

:func:`load_state_dict` reads ``.pth``/``.pt``/``.bin`` with
``torch.load(weights_only=True)`` (PyTorch needed) and ``.safetensors`` with
``safetensors.numpy`` (no PyTorch), unwraps ``{'model': ...}``,
``{'state_dict': ...}`` and ``{'model_state_dict': ...}`` and strips
``module.`` prefixes (DataParallel).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "Rule",
    "conv_rules",
    "bn_rules",
    "linear_rules",
    "prefixed",
    "load_state_dict",
    "unwrap_state_dict",
    "apply_rules",
]

_WRAPPERS = ("model", "state_dict", "model_state_dict")
_MAX_LISTED = 20


@dataclasses.dataclass(frozen=True)
class Rule:
  """One PyTorch tensor -> one Flax variable.

  Attributes:
    source: PyTorch state_dict key, e.g. ``'features.0.weight'``.
    target: Flax path ``(collection, module, ..., leaf)``, or None to drop
      the tensor (``num_batches_tracked``).
    layout: ``'conv'`` (OIHW -> HWIO), ``'linear'`` ([out, in] -> [in, out])
      or ``'copy'``.
    optional: the key may be absent from the checkpoint.
  """
  source: str
  target: tuple[str, ...] | None
  layout: str = "copy"
  optional: bool = False


def conv_rules(source: str, target: Sequence[str], *, bias: bool) -> list[Rule]:
  """Rules for ``nn.Conv2d`` ``source`` -> Flax ``nn.Conv`` at ``target``."""
  rules = [Rule(f"{source}.weight", ("params", *target, "kernel"), "conv")]
  if bias:
    rules.append(Rule(f"{source}.bias", ("params", *target, "bias")))
  return rules


def linear_rules(source: str, target: Sequence[str]) -> list[Rule]:
  """Rules for ``nn.Linear`` ``source`` -> Flax ``nn.Dense`` at ``target``."""
  return [Rule(f"{source}.weight", ("params", *target, "kernel"), "linear"),
          Rule(f"{source}.bias", ("params", *target, "bias"))]


def bn_rules(source: str, target: Sequence[str]) -> list[Rule]:
  """Rules for ``nn.BatchNorm2d`` ``source`` -> ``nn.BatchNorm`` ``target``."""
  return [Rule(f"{source}.weight", ("params", *target, "scale")),
          Rule(f"{source}.bias", ("params", *target, "bias")),
          Rule(f"{source}.running_mean", ("batch_stats", *target, "mean")),
          Rule(f"{source}.running_var", ("batch_stats", *target, "var")),
          Rule(f"{source}.num_batches_tracked", None, optional=True)]


def prefixed(rules: Iterable[Rule], source: str = "",
             target: Sequence[str] = ()) -> list[Rule]:
  """``rules`` with ``source`` prepended to the PyTorch keys and ``target``
  inserted after the collection of the Flax paths (a submodule)."""
  out = []
  for r in rules:
    path = None if r.target is None else (r.target[0], *target, *r.target[1:])
    out.append(dataclasses.replace(r, source=source + r.source, target=path))
  return out


def unwrap_state_dict(obj, name: str = "checkpoint") -> dict[str, object]:
  """The state_dict inside ``obj``, without ``module.`` prefixes.

  Unwraps (repeatedly) a dict holding only a state_dict under ``'model'``,
  ``'state_dict'`` or ``'model_state_dict'`` (other entries such as
  ``epoch`` or ``optimizer_state_dict`` are dropped).

  Raises:
    ValueError: when no mapping of string keys to tensors is found, or when
      stripping ``module.`` makes two keys collide.
  """
  while isinstance(obj, Mapping):
    inner = [k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)]
    if not inner:
      break
    obj = obj[inner[0]]
  if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
    raise ValueError(f"{name}: expected a state_dict (str -> tensor), possibly "
                     f"wrapped in {_WRAPPERS}, got {type(obj).__name__}")
  out = {}
  for key, value in obj.items():
    stripped = key
    while stripped.startswith("module."):
      stripped = stripped[len("module."):]
    if stripped in out:
      raise ValueError(f"{name}: key {key!r} collides with {stripped!r} after "
                       "stripping 'module.'")
    out[stripped] = value
  return out


def _to_numpy(value, key: str, name: str) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, "detach"):  # torch.Tensor, imported only when loaded.
    return value.detach().cpu().float().numpy()
  raise ValueError(f"{name}: {key!r} is a {type(value).__name__}, not a tensor")


def load_state_dict(path) -> dict[str, np.ndarray]:
  """Reads a PyTorch checkpoint as {key: numpy array}.

  Args:
    path: ``.safetensors`` (read with ``safetensors.numpy``, no PyTorch) or a
      ``torch.save`` file (``.pth``, ``.pt``, ``.bin``, ``.tar``, read with
      ``torch.load(map_location='cpu', weights_only=True)``).

  Returns:
    The unwrapped state_dict (see :func:`unwrap_state_dict`); tensors as
    numpy arrays (bfloat16/float16 tensors from ``.pth`` files are cast to
    float32; non-tensor entries are dropped only if they are wrapper
    metadata).

  Raises:
    ValueError: for a missing file, a pickle that ``weights_only=True``
      refuses (e.g. PML's checkpoints, which also pickle a yacs config:
      re-save ``ckpt['model']`` alone), or no state_dict inside.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"checkpoint {path} does not exist")
  if path.suffix == ".safetensors":
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    return unwrap_state_dict(safetensors.numpy.load_file(str(path)), str(path))
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f"{path}: reading PyTorch pickles needs torch (pip "
                     "install 'counting_jax[convert]'), or convert the file to "
                     ".safetensors") from e
  try:
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # pickle errors have many types.
    raise ValueError(
        f"{path}: torch.load(weights_only=True) refused it ({e}). If it "
        "pickles other objects (PML saves a yacs config), load it in a "
        "trusted environment and re-save only the state_dict") from e
  state = unwrap_state_dict(obj, str(path))
  return {k: _to_numpy(v, k, str(path)) for k, v in state.items()}


def _transform(array: np.ndarray, layout: str) -> np.ndarray:
  if layout == "conv":
    return array.transpose(2, 3, 1, 0) if array.ndim == 4 else array
  if layout == "linear":
    return array.T if array.ndim == 2 else array
  return array


def _flatten(tree, prefix=()) -> dict[tuple[str, ...], object]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out


def _listing(title: str, items: list[str]) -> str:
  shown = "\n    ".join(items[:_MAX_LISTED])
  more = (f"\n    ... and {len(items) - _MAX_LISTED} more"
          if len(items) > _MAX_LISTED else "")
  return f"  {title} ({len(items)}):\n    {shown}{more}"


def apply_rules(state_dict: Mapping[str, np.ndarray], rules: Sequence[Rule],
                abstract_variables, *, ignore: Sequence[str] = (),
                name: str = "checkpoint") -> dict:
  """Converts ``state_dict`` with ``rules`` and checks it against a model.

  Args:
    state_dict: {PyTorch key: array}, e.g. from :func:`load_state_dict`.
    rules: the key map.
    abstract_variables: the model's variables (arrays or
      ``jax.ShapeDtypeStruct``), e.g. ``jax.eval_shape(model.init, ...)``;
      defines which Flax variables must be filled and their shapes.
    ignore: key prefixes of the checkpoint to drop silently (e.g.
      ``'classifier.'`` of an ImageNet VGG).
    name: the checkpoint's name, for messages.

  Returns:
    Nested dicts {collection: {module: ... {leaf: float32 numpy array}}}
    with exactly the collections and leaves of ``abstract_variables``.

  Raises:
    ValueError: listing the missing keys, unexpected keys, mis-shaped
      tensors (PyTorch shape, converted shape, expected shape) and Flax
      variables that no rule fills.
  """
  expected = _flatten(abstract_variables)
  mapped = {r.source for r in rules}
  missing = [r.source for r in rules
             if r.source not in state_dict and not r.optional]
  unexpected = sorted(k for k in state_dict if k not in mapped and
                      not any(k.startswith(p) for p in ignore))
  misshaped, unknown, flat = [], [], {}
  for rule in rules:
    if rule.target is None or rule.source not in state_dict:
      continue
    array = np.asarray(state_dict[rule.source])
    value = _transform(array, rule.layout)
    if rule.target not in expected:
      unknown.append(f"{rule.source} -> {'/'.join(rule.target)}")
      continue
    want = tuple(expected[rule.target].shape)
    if value.shape != want:
      misshaped.append(f"{rule.source}: {tuple(array.shape)} -> "
                       f"{'/'.join(rule.target)} {tuple(value.shape)}, "
                       f"model expects {want}")
      continue
    flat[rule.target] = value.astype(np.float32, copy=False)
  targets = {r.target for r in rules}
  unfilled = ["/".join(p) for p in expected if p not in targets]
  problems = []
  if missing:
    problems.append(_listing("missing keys", missing))
  if unexpected:
    problems.append(_listing("unexpected keys", unexpected))
  if misshaped:
    problems.append(_listing("mis-shaped tensors", misshaped))
  if unknown:
    problems.append(_listing("key map targets absent from the model", unknown))
  if unfilled:
    problems.append(_listing("model variables no key fills", unfilled))
  if problems:
    raise ValueError(f"{name} does not match the model:\n" +
                     "\n".join(problems))
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return tree
