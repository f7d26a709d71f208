"""T2ICount loss against the official trainer's values and gradients on
four real FSC-147 crops (plain, rescaled, negative prompt, mosaic) and their
batch, plus the paper-form options and an empty-GT check."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax.losses import _t2icount as t2i

CASES = ("fsc2287_plain", "fsc687_rescaled", "fsc336_negative",
         "fsc3338_mosaic")
RTOL = 1e-5


@pytest.fixture(scope="module")
def official(official_values):
  return official_values("t2icount")


def inputs(z, cases):
  cat = lambda k: np.concatenate([z[f"{c}/{k}"] for c in cases])
  return dict(density=cat("pred_den"), sim_x2=cat("sim_x2"),
              sim_x1=cat("sim_x1"), gt=60 * cat("den_dataset"),
              fused_attention=cat("fused_attn"), region=cat("img_attn_mask"))


def close(got, want, what):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  # Relative to the largest reference value; an absolute 1e-7 floor for
  # references that are exactly 0 (SSIM term of an empty GT).
  err = np.abs(got - want).max()
  bound = RTOL * np.abs(want).max() + 1e-7
  assert err <= bound, f"{what}: error {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("name", CASES + ("batch",))
def test_official_values_and_gradients(official, name):
  z = official
  a = inputs(z, CASES if name == "batch" else (name,))

  def total(d, s2, s1):
    return t2i.t2icount_loss(d, s2, s1, a["gt"], a["fused_attention"],
                             a["region"])

  (loss, aux), grads = jax.jit(jax.value_and_grad(
      total, argnums=(0, 1, 2), has_aux=True))(a["density"], a["sim_x2"],
                                               a["sim_x1"])
  ref = lambda k: z[f"{name}/{k}"]
  close(loss, ref("loss_total"), "loss_total")
  close(aux["tv"].mean(), ref("loss_tv"), "loss_tv")
  close(aux["reg"].mean(), ref("loss_reg"), "loss_reg")
  close(aux["ssim"].mean(), ref("loss_ssim"), "loss_ssim")
  close(aux["rrc1"], ref("rrc1_per_sample"), "rrc1")
  close(aux["rrc2"], ref("rrc2_per_sample"), "rrc2")
  close(aux["total"].mean(), ref("loss_total"), "per-image total")
  for g, key in zip(grads, ("grad_pred_den", "grad_sim_x2", "grad_sim_x1")):
    close(g, ref(key)[:, 0], key)
  ambiguous = a["fused_attention"] * a["region"] >= 0.3
  np.testing.assert_array_equal(ambiguous, ref("AN")[:, 0] == 1)
  np.testing.assert_array_equal(a["gt"] >= 0.06, ref("P")[:, 0] == 1)
  for stage, sim in (("rrc1", a["sim_x2"]), ("rrc2", a["sim_x1"])):
    per, (n_pos, n_neg) = t2i.rrc_loss(sim, a["gt"], ambiguous)
    np.testing.assert_array_equal(n_pos, ref(f"{stage}_pos_num"))
    np.testing.assert_array_equal(n_neg, ref(f"{stage}_neg_num"))
  if name == "batch":
    return
  gt = a["gt"]
  grad_ssim = jax.grad(lambda d: t2i.ssim_term(d, gt)[0])(a["density"])
  close(grad_ssim, ref("grad_ssim_term")[:, 0], "grad_ssim_term")
  grad_reg = jax.grad(lambda d: t2i.ssim_term(d, gt)[0]
                      + 0.1 * t2i.tv_term(d, gt).mean())(a["density"])
  close(grad_reg, ref("grad_reg")[:, 0], "grad_reg")
  amb = jnp.asarray(ambiguous)
  grad_rrc = jax.grad(lambda s: t2i.rrc_loss(s, gt, amb)[0].mean())(
      a["sim_x2"])
  close(grad_rrc, ref("grad_rrc1_unweighted")[:, 0], "grad_rrc1")


def test_negative_prompt_terms(official):
  a = inputs(official, ("fsc336_negative",))
  assert not a["gt"].any()
  _, aux = t2i.t2icount_loss(**a)
  assert float(aux["ssim"][0]) == 0.0
  assert float(aux["tv"][0]) == pytest.approx(1.0, abs=1e-6)


def test_ssim_closed_forms():
  g = np.random.default_rng(0)
  x = g.uniform(0, 1, size=(2, 16, 16)).astype(np.float32)
  np.testing.assert_allclose(t2i.ssim(x, x), 1.0, atol=1e-5)
  w = t2i.gaussian_window()
  assert w.shape == (3, 3) and abs(w.sum() - 1) < 1e-6
  # 1-D Gaussian of sigma 1.5 at offsets -1, 0, 1, normalised.
  e = np.exp(-1 / 4.5)
  np.testing.assert_allclose(w[1], np.array([e, 1, e]) / (1 + 2 * e)
                             * (1 / (1 + 2 * e)), rtol=1e-6)


def test_options_and_empty_gt():
  g = np.random.default_rng(1)
  shape = (2, 16, 16)
  d = g.uniform(0, 1, size=shape).astype(np.float32)
  gt = np.where(g.uniform(size=shape) > 0.7, 0.06, 0.0).astype(np.float32)
  s = g.uniform(-1, 1, size=shape).astype(np.float32)
  fused = g.uniform(size=shape).astype(np.float32)
  r = np.ones(shape, np.float32)
  base, _ = t2i.t2icount_loss(d, s, s, gt, fused, r)
  incl, _ = t2i.t2icount_loss(d, s, s, gt, fused, r,
                              ssim_mask_inclusive=True)
  assert float(base) != float(incl)  # 0.06 pixels enter the paper's mask
  l2 = t2i.tv_term(d, gt, norm="l2")
  p = d / (d.sum((1, 2), keepdims=True) + 1e-6)
  q = gt / (gt.sum((1, 2), keepdims=True) + 1e-6)
  np.testing.assert_allclose(l2, ((p - q) ** 2).sum((1, 2)), rtol=1e-5)
  with pytest.raises(ValueError, match="tv_norm"):
    t2i.tv_term(d, gt, norm="l3")
  with pytest.raises(ValueError, match="share one"):
    t2i.t2icount_loss(d, s, s, gt[:, :8], fused, r)
  zeros = np.zeros(shape, np.float32)
  for pred in (zeros, d):
    loss, grads = jax.value_and_grad(
        lambda p_: t2i.t2icount_loss(p_, s, s, zeros, fused, r)[0])(pred)
    assert np.isfinite(float(loss)) and np.isfinite(grads).all()
