"""mPrompt's loss: density, count, segmentation and context-prompt terms.

Guo et al., "Regressor-Segmenter Mutual Prompt Learning for Crowd Counting",
CVPR 2024, eqs. 1-4, and the official training loop (csguomy/mPrompt@e7ae00d),
which differs from the paper:

============== ================================ ==============================
term           official code (default)          paper
============== ================================ ==============================
density        sum over batch and pixels of     L_den, "MSE"
               (y_hat - y)^2                    (weight lambda_d = 1)
count          mean_b |sum y_hat_b - sum y_b|   not in the paper
segmentation   BCE(m_hat, m), mean over pixels  L_seg (lambda_s = 0.5)
context        1 - mean_b |B^ & m| /            eq. 3: -sum(B(y_hat) &
               (|B^ | m| + 1e-4), B^ = y_hat>0  B(m_hat)) / sum B(y_hat)
               (thresholded: no gradient)       (lambda_c = 0.5)
weights        all 1                            eq. 4: 1, 0.5, 0.5
============== ================================ ==============================

Presets: ``WEIGHTS["code"]`` = (density 1, count 1, segmentation 1, context
1), the official default; ``WEIGHTS["paper"]`` = (1, 0, 0.5, 0.5), eq. 4.
Context terms: ``"iou"`` (official; its thresholds carry no gradient, so it
only shifts the loss value) or ``"soft"``, a differentiable context prompt
``1 - mean_b sum(y_hat m_hat) / (sum y_hat + 1e-6)``: one minus the fraction
of predicted mass inside the predicted mask (eq. 3 with B(.) replaced by the
maps themselves; our choice, not the authors'). Both lie in [0, 1] and are
finite on images without points.

Online prompt (paper sec. 3.2, eq. 2): from epoch ``online_after`` (kappa =
50; the epoch counts from 0, as the official ``epoch_index``) the
segmentation target becomes ``m <- (m | B^) & m_K``. The official code
computes the AND as ``masked_fill(~mask_knn, 0)`` on a uint8 ``mask_knn``,
whose bitwise NOT is never zero (~0 = 255, ~1 = 254): current PyTorch raises
on it (older versions zeroed the whole target). We do the intended boolean
AND. The context IoU uses the target before this refinement, as the code.

BCE as ``torch.nn.BCELoss``: -(t log p + (1 - t) log(1 - p)) with each log
clamped at -100.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["WEIGHTS", "CONTEXT_TERMS", "mprompt_loss", "online_target",
           "binary_cross_entropy"]

# (density, count, segmentation, context) weights.
WEIGHTS = {"code": (1.0, 1.0, 1.0, 1.0), "paper": (1.0, 0.0, 0.5, 0.5)}
CONTEXT_TERMS = ("iou", "soft")


def binary_cross_entropy(p, t):
  """Element-wise ``torch.nn.BCELoss(reduction='none')``: logs clamped at
  -100 (finite at p = 0 or 1)."""
  logp = jnp.maximum(jnp.log(p), -100.0)
  log1p = jnp.maximum(jnp.log1p(-p), -100.0)
  return -(t * logp + (1.0 - t) * log1p)


def online_target(mask, prediction_mask, knn):
  """The online prompt ``(m | B^) & m_K`` (float 0/1, same shape)."""
  return ((mask > 0) | (prediction_mask > 0)) & (knn > 0)


def mprompt_loss(outputs, batch, *, weights=WEIGHTS["code"],
                 context: str = "iou", online_after: int | None = 50):
  """The mPrompt loss of one batch.

  Args:
    outputs: {"density": float32 [B, H, W] y_hat (>= 0, count units, stride
      1), "seg": float32 [B, H, W] m_hat in (0, 1)}.
    batch: holds ``masks`` float32 [B, H, W, 3] = (density y, offline prompt
      m, K-NN mask m_K) (``mprompt_targets.add_targets``) and, when
      ``online_after`` is set, ``epoch`` int [B] (0-based epoch of the step;
      the trainer adds it).
    weights: (density, count, segmentation, context) weights
      (:data:`WEIGHTS`).
    context: ``"iou"`` (official) or ``"soft"`` (differentiable).
    online_after: kappa, the first epoch of the online prompt; None never.

  Returns:
    (loss float32 [], {"density", "count", "seg", "context": float32 [B]});
    the density term is summed over the batch in the loss (its per-image
    sums are the aux values), the others are batch means.

  Raises:
    ValueError: for an unknown ``context`` or a ``weights`` not of length 4.
    KeyError: when ``online_after`` is set and the batch has no ``epoch``.
  """
  if context not in CONTEXT_TERMS:
    raise ValueError(f"context must be one of {CONTEXT_TERMS}, got "
                     f"{context!r}")
  if len(weights) != 4:
    raise ValueError(f"weights must be (density, count, seg, context), got "
                     f"{weights}")
  pred, seg = outputs["density"], outputs["seg"]
  masks = batch["masks"].astype(jnp.float32)
  y, m, knn = masks[..., 0], masks[..., 1], masks[..., 2]
  axes = (1, 2)
  den = jnp.sum((pred - y) ** 2, axes)
  count = jnp.abs(pred.sum(axes) - y.sum(axes))
  pred_mask = jax.lax.stop_gradient(pred > 0)
  if context == "iou":
    inter = jnp.sum(pred_mask & (m > 0), axes)
    union = jnp.sum(pred_mask | (m > 0), axes)
    ctx = 1.0 - inter / (union + 1e-4)
  else:
    ctx = 1.0 - jnp.sum(pred * seg, axes) / (jnp.sum(pred, axes) + 1e-6)
  target = m > 0
  if online_after is not None:
    if "epoch" not in batch:
      raise KeyError("mprompt_loss: the online prompt needs batch['epoch'] "
                     "(the trainer adds it), or online_after=None")
    online = (batch["epoch"] >= online_after)[:, None, None]
    target = jnp.where(online, online_target(m, pred_mask, knn), target)
  bce = jnp.mean(binary_cross_entropy(seg, target.astype(jnp.float32)), axes)
  wd, wc, ws, wx = (float(w) for w in weights)
  loss = (wd * den.sum() + wc * count.mean() + ws * bce.mean()
          + wx * ctx.mean())
  return loss, {"density": den, "count": count, "seg": bce, "context": ctx}
