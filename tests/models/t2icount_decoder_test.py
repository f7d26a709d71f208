"""T2ICount HSCM decoder and prompt reductions against the official
``Count.forward`` outputs (decoder weights from the documented recipe,
loaded through the official key names)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax.convert import t2icount_keys
from counting_jax.convert import torch as tc
from counting_jax.models import t2icount_decoder as td
from counting_jax.models import t2icount_prompt as tp


def recipe_state_dict(z) -> dict:
  """The official decoder state_dict of the reference recipe."""
  keys = [str(k) for k in z["decoder/sd_keys"]]
  shapes = json.loads(str(z["decoder/sd_shapes"]))
  seed = int(z["decoder/recipe_seed"])
  out = {}
  for i, (k, s) in enumerate(zip(keys, shapes)):
    s = tuple(s)
    u = np.random.RandomState(seed + i).uniform(-1.0, 1.0, size=s)
    if len(s) >= 2:
      w = u / np.sqrt(float(np.prod(s[1:])))
    elif k.endswith("weight"):
      w = 1.0 + 0.1 * u
    else:
      w = 0.1 * u
    out[k] = w.astype(np.float32)
  return out


@pytest.fixture(scope="module")
def official(official_values):
  return official_values("t2icount")


def nhwc(a):
  return np.transpose(np.asarray(a, np.float32), (0, 2, 3, 1))


@pytest.fixture(scope="module")
def decoded(official):
  z = official
  sd = recipe_state_dict(z)
  keys = [str(k) for k in z["decoder/sd_keys"]]
  np.testing.assert_allclose([sd[k].astype(np.float64).sum() for k in keys],
                             z["decoder/sd_sum"], rtol=1e-6)
  for k, first in zip(keys, z["decoder/sd_first4"]):
    head = sd[k].ravel()[:4]
    np.testing.assert_array_equal(head, first[:head.size], err_msg=k)
  taps = tuple(nhwc(z[f"decoder/in_tap{i}"]) for i in (3, 2, 1, 0))
  mask = z["decoder/in_prompt_attn_mask"]
  t0 = tp.text_feature(jnp.asarray(z["decoder/in_text_states"],
                                   jnp.float32), mask)
  model = td.HSCMDecoder()
  abstract = jax.eval_shape(model.init, jax.random.key(0), taps, t0)
  params = tc.apply_rules(sd, t2icount_keys.hscm_decoder_rules(""),
                          abstract)
  n = sum(v.size for v in jax.tree.leaves(params))
  assert n == int(z["decoder/n_params"])
  return model, params, taps, t0, jax.jit(model.apply)(params, taps, t0)


def test_text_feature(official, decoded):
  np.testing.assert_allclose(decoded[3], official["decoder/text_feat_mean"],
                             atol=1e-6)


@pytest.mark.parametrize("name,key", [
    ("density", "out_density"), ("sim_x2", "out_sim_x2"),
    ("sim_x1", "out_sim_x1"), ("up1_feat", "up1_feat"),
    ("up1_text", "up1_text"), ("up2_feat", "up2_feat"),
    ("up2_text", "up2_text"), ("up3_feat", "up3_feat")])
def test_decoder_outputs_and_intermediates(official, decoded, name, key):
  want = official[f"decoder/{key}"]
  if want.ndim == 4:
    want = nhwc(want)
    if want.shape[-1] == 1:
      want = want[..., 0]
  np.testing.assert_allclose(decoded[4][name], want, atol=1e-4, rtol=0)


def test_fused_attention_from_cross_attention_lists(official):
  z = official
  mask = z["decoder/in_prompt_attn_mask"]
  maps = {s: nhwc(z[f"decoder/in_attn{s}"]) for s in (12, 24, 48)}
  for s, m in maps.items():
    got = tp.token_mean_map(m, mask, 48)
    np.testing.assert_allclose(got, z[f"decoder/attn{s}_token_mean"][:, 0],
                               atol=1e-6)
  # As UNet lists [B, h*w, 77]: five layers per size whose mean is the
  # stored map (two down, three up), plus mid-block maps that must be
  # ignored and would change the result.
  g = np.random.default_rng(0)
  lists = {"down": [], "mid": [], "up": []}
  for s, m in maps.items():
    flat = m.reshape(2, s * s, 77)
    noise = [g.normal(size=flat.shape).astype(np.float32) for _ in range(4)]
    layers = [flat + e for e in noise] + [flat - sum(noise)]
    lists["down"] += layers[:2]
    lists["up"] += layers[2:]
  lists["mid"].append(np.full((2, 36, 77), 5.0, np.float32))
  lists["up"].append(np.zeros((2, 96 * 96, 77), np.float32))  # > 48²
  grouped = tp.group_cross_attention(lists, 48)
  assert sorted(grouped) == [12, 24, 48]
  fused = tp.fused_attention(grouped, mask, 48)
  np.testing.assert_allclose(fused, z["decoder/out_fused_attn"][:, 0],
                             atol=2e-5)
  with pytest.raises(KeyError, match="missing"):
    tp.fused_attention({12: grouped[12]}, mask, 48)


def test_resolution_is_lifted_and_checked():
  # The official decoder only runs at a 48² latent (384² crops); ours
  # follows the taps' grid. Tiny widths keep this fast.
  model = td.HSCMDecoder(dims=(16, 8, 8), heads=2)
  g = np.random.default_rng(1)
  taps = tuple(g.normal(size=(1, 64 // f, 80 // f, c)).astype(np.float32)
               for f, c in ((8, 12), (4, 12), (2, 8), (1, 4)))
  t0 = g.normal(size=(1, 20)).astype(np.float32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), taps, t0)
  params = jax.tree.map(
      lambda a: (0.3 * g.normal(size=a.shape)).astype(np.float32), abstract)
  out = jax.jit(model.apply)(params, taps, t0)
  assert out["density"].shape == (1, 64, 80)
  assert out["sim_x2"].shape == out["sim_x1"].shape == (1, 64, 80)
  assert np.isfinite(out["density"]).all()
  with pytest.raises(ValueError, match="taps must be"):
    model.apply(params, taps[:3] + (taps[3][:, :32],), t0)
