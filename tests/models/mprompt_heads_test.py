"""mPrompt's heads with the official stored weights against the official
outputs (``mprompt.npz`` ``heads/...``): eval mode, train mode (batch
statistics) and the BatchNorm running statistics after one train pass."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax.convert import mprompt_keys
from counting_jax.convert import torch as tc
from counting_jax.models import mprompt

TOL = 1e-4


@pytest.fixture(scope="module")
def run(official_values):
  ref = official_values("mprompt")
  sd = {k[len("heads/sd/"):]: ref[k] for k in ref.files
        if k.startswith("heads/sd/")}
  heads = mprompt.MPromptHeads()
  x = jnp.asarray(ref["heads/in_feat"].astype(np.float32).transpose(0, 2, 3, 1))
  abstract = jax.eval_shape(lambda: heads.init(jax.random.key(0), x))
  variables = tc.apply_rules(sd, mprompt_keys.head_rules(prefix=()), abstract)
  apply = jax.jit(lambda v, x, train: heads.apply(
      v, x, train=train, mutable=["intermediates", "batch_stats"]),
                  static_argnums=2)
  return ref, {mode: apply(variables, x, mode == "train")
               for mode in ("eval", "train")}


def _close(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  assert np.abs(expected).max() > 1e-2
  np.testing.assert_allclose(actual, expected, rtol=0, atol=TOL)


def _nhwc(a):
  return a.transpose(0, 2, 3, 1)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_heads_equal_the_official_outputs(run, mode):
  ref, outs = run
  out, cols = outs[mode]
  inter = {k: v[0] for k, v in cols["intermediates"].items()}
  _close(out["density"], ref[f"heads/{mode}/density"][:, 0])
  _close(out["seg"], ref[f"heads/{mode}/seg"][:, 0])
  for name in ("seg_feat_s", "count_feat", "count_head_pre_upsample",
               "seg_head_pre_tanh"):
    _close(inter[name], _nhwc(ref[f"heads/{mode}/{name}"]))
  if mode == "eval":
    _close(inter["redc"][:1], _nhwc(ref["heads/eval/redc"]))
    for k in range(4):
      _close(inter[f"aspp_out{k}"][:1], _nhwc(ref[f"heads/eval/aspp_bn{k}"]))


def test_running_statistics_after_one_train_pass(run):
  ref, outs = run
  stats = outs["train"][1]["batch_stats"]
  want = json.loads(str(ref["heads/train/bn_running_after"]))
  # Momentum 0.01 (PyTorch) in the heads, 0.1 in the ASPP: the two moved
  # by different amounts from the stored statistics.
  for key, name in (("last_layer_seg.1", "seg_bn0"), ("aspp.1", "aspp_bn0")):
    np.testing.assert_allclose(stats[name]["mean"],
                               want[f"{key}.running_mean"], atol=TOL, rtol=0)
    np.testing.assert_allclose(stats[name]["var"],
                               want[f"{key}.running_var"], atol=TOL, rtol=0)
    # The update itself, at a finer tolerance (the means moved by up to
    # 7e-4 at momentum 0.01 and 0.1 at 0.1).
    before = ref[f"heads/sd/{key}.running_mean"].astype(np.float32)
    moved = np.asarray(stats[name]["mean"]) - before
    assert np.abs(moved).max() > 5e-4
    np.testing.assert_allclose(
        moved, np.asarray(want[f"{key}.running_mean"]) - before, atol=1e-6,
        rtol=0)
