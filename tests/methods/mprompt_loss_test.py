"""mPrompt's loss against the official training loop's values and gradients
(``mprompt.npz`` ``loss/...``: epoch 0, and epoch 50 with the K-NN mask as a
boolean, the intended online prompt), closed forms and the presets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax.methods import mprompt_loss as ml


@pytest.fixture(scope="module")
def ref(official_values):
  return official_values("mprompt")


def _inputs(ref):
  cases = [str(c) for c in ref["loss/cases"]]
  masks = np.stack([np.stack([ref[f"{c}/gt_map"][0].astype(np.float32),
                              ref[f"{c}/mask"][0],
                              ref[f"{c}/mask_knn"][0].astype(np.float32)],
                             -1) for c in cases])
  pred = ref["loss/in_prediction"][:, 0].astype(np.float32)
  seg = ref["loss/in_mask_out"][:, 0].astype(np.float32)
  return pred, seg, masks


def _close(actual, expected, rtol=1e-5):
  actual, expected = np.asarray(actual), np.asarray(expected)
  scale = float(np.max(np.abs(expected)))
  assert scale > 0
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("variant, epoch", [("epoch0", 0),
                                            ("epoch50_bool_knn", 50)])
def test_values_and_gradients_equal_the_official_loop(ref, variant, epoch):
  pred, seg, masks = _inputs(ref)
  batch = {"masks": masks, "epoch": np.full((2,), epoch, np.int32)}

  def total(p, s):
    return ml.mprompt_loss({"density": p, "seg": s}, batch)

  (loss, aux), (gp, gs) = jax.jit(jax.value_and_grad(
      total, argnums=(0, 1), has_aux=True))(pred, seg)
  r = f"loss/{variant}"
  _close(aux["density"].sum(), ref[f"{r}/loss"])
  _close(aux["count"].mean(), ref[f"{r}/count_loss"])
  _close(aux["context"].mean(), ref[f"{r}/loss_iou"])
  _close(aux["seg"].mean(), ref[f"{r}/loss_seg"])
  _close(loss, ref[f"{r}/total"])
  _close(gs, ref[f"{r}/grad_mask_out"][:, 0])
  grad_pred = ref["loss/epoch0/grad_prediction"][:, 0]
  _close(gp, grad_pred)
  target = ml.online_target(masks[..., 1], pred > 0, masks[..., 2])
  want = ref[f"{r}/seg_target"][:, 0] > 0
  np.testing.assert_array_equal(target if epoch else masks[..., 1] > 0, want)


def test_paper_preset_soft_context_and_empty_images():
  g = np.random.default_rng(0)
  pred = jnp.asarray(g.uniform(0, 1, (2, 8, 8)), jnp.float32)
  seg = jnp.asarray(g.uniform(0.1, 0.9, (2, 8, 8)), jnp.float32)
  masks = np.zeros((2, 8, 8, 3), np.float32)
  masks[..., 2] = 1.0  # no points: y = 0, m = 0
  batch = {"masks": masks}

  def loss(p, s, context):
    return ml.mprompt_loss({"density": p, "seg": s}, batch,
                           weights=ml.WEIGHTS["paper"], context=context,
                           online_after=None)

  value, aux = loss(pred, seg, "soft")
  ratio = (pred * seg).sum((1, 2)) / (pred.sum((1, 2)) + 1e-6)
  bce = -np.log(1 - np.asarray(seg)).mean((1, 2))
  expected = (np.sum(np.asarray(pred) ** 2) + 0.5 * bce.mean()
              + 0.5 * (1 - ratio).mean())
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  # The soft context term has a gradient w.r.t. both maps; the IoU none.
  g_soft = jax.grad(lambda s: aux_ctx(s, pred, "soft"))(seg)
  g_iou = jax.grad(lambda s: aux_ctx(s, pred, "iou"))(seg)
  assert float(jnp.abs(g_soft).sum()) > 0 and float(jnp.abs(g_iou).sum()) == 0
  zero, _ = loss(jnp.zeros_like(pred), seg, "soft")
  assert np.isfinite(zero)
  with pytest.raises(KeyError, match="epoch"):
    ml.mprompt_loss({"density": pred, "seg": seg}, batch)
  with pytest.raises(ValueError, match="context"):
    ml.mprompt_loss({"density": pred, "seg": seg}, batch, context="x")


def aux_ctx(seg, pred, context):
  masks = jnp.zeros(pred.shape + (3,))
  _, aux = ml.mprompt_loss({"density": pred, "seg": seg}, {"masks": masks},
                           context=context, online_after=None)
  return aux["context"].sum()


def test_bce_matches_torch_clamp():
  p = jnp.array([0.0, 1.0, 0.3])
  t = jnp.array([1.0, 0.0, 1.0])
  np.testing.assert_allclose(ml.binary_cross_entropy(p, t),
                             [100.0, 100.0, -np.log(0.3)], rtol=1e-6)
