"""mPrompt's regressor-segmenter network on HRNet-W40, density stride 1.

Guo et al., "Regressor-Segmenter Mutual Prompt Learning for Crowd Counting",
CVPR 2024, sec. 3 and Fig. 2; official network csguomy/mPrompt@e7ae00d
(its ``HighResolutionNet`` of the reg-seg model). What the code does beyond
the paper, and what we do the same:

* **Backbone**: HRNet-W40 stages 1-4 (branches 40/80/160/320, 1/4/3
  modules, 4 BasicBlocks each, nearest fuse upsampling), without the
  classification head, but with the **second stem conv at stride 1**: the
  branches run at strides 2, 4, 8, 16 and the outputs come at the full input
  resolution. Inputs must be multiples of 16.
* **Head input**: branches 1-3 resized bilinearly (``align_corners=False``)
  to branch 0 and concatenated with **layer1's output** (256 channels):
  40 + 80 + 160 + 320 + 256 = 856 channels at stride 2.
* **Segmenter**: three conv3x3 (bias) + BN + ReLU, 856 -> 128 -> 64 -> 32,
  giving s; the attention is ``(tanh(s) + 1) / 2`` = sigmoid(2 s) (the
  paper's "sigmoid"), in [0.5, 1) after the ReLU.
* **Regressor**: conv3x3 856 -> 128 + BN + ReLU; an ASPP the paper does not
  mention: 4 dilated conv3x3 128 -> 128 (bias; dilation = padding = 2, 4,
  6, 8) + BN, each added with weight 0.25, then ReLU; conv3x3 128 -> 64 + BN
  + ReLU, 64 -> 32 + BN + ReLU; times the attention; conv1x1 32 -> 1;
  bilinear x2 to the input size, ReLU: the density y_hat.
* **Segmentation output** m_hat: the attention resized bilinearly x2,
  conv1x1 32 -> 1, ``(tanh + 1) / 2``.
* **BatchNorm**: momentum 0.01 in PyTorch's convention (Flax 0.99) in the
  backbone and heads, PyTorch's default 0.1 (Flax 0.9) in the ASPP; eps
  1e-5. Flax's running variance uses the biased batch variance where
  PyTorch uses the unbiased one: each update differs by a relative
  1/(n - 1), n = batch x pixels per channel (n = 80,000 at stride 2 for
  two 400 x 400 crops: 1.3e-5).

Params: ``backbone`` (:class:`~counting_jax.models.backbones.hrnet.HRNet`),
``heads`` (:class:`MPromptHeads`: ``seg_conv{0,1,2}``/``seg_bn{0,1,2}``,
``seg_head``, ``redc_conv``/``redc_bn``, ``aspp_conv{0..3}``/
``aspp_bn{0..3}``, ``count_conv{0,1}``/``count_bn{0,1}``, ``count_head``);
:mod:`counting_jax.convert.mprompt_keys` maps them to the official names.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from counting_jax.models.backbones import _ops
from counting_jax.models.backbones.hrnet import HRNet

__all__ = ["MPromptHeads", "MPrompt", "MPROMPT_HRNET_W40", "MPROMPT_TINY",
           "ASPP_DILATIONS"]

ASPP_DILATIONS = (2, 4, 6, 8)
_zeros = nn.initializers.zeros


class MPromptHeads(nn.Module):
  """Segmenter and regressor heads on the concatenated features.

  Attributes:
    seg_widths: segmenter conv widths (128, 64, 32).
    count_width: regressor width before the ASPP (128).
    count_widths: regressor widths after it (64, 32); the last must equal
      ``seg_widths[-1]`` (the attention multiplies them).
    dtype: compute dtype (params stay float32; outputs are float32).

  Call: ``features`` float [B, h, w, C] -> {"density": float32 [B, 2h, 2w]
  (>= 0), "seg": float32 [B, 2h, 2w] in (0, 1)}. Intermediates are sown in
  the ``intermediates`` collection: ``seg_feat_s``, ``count_feat``
  [B, h, w, 32], ``count_head_pre_upsample`` [B, h, w, 1],
  ``seg_head_pre_tanh`` [B, 2h, 2w, 1], ``redc``, ``aspp_out{k}`` (BN output)
  [B, h, w, 128].
  """
  seg_widths: Sequence[int] = (128, 64, 32)
  count_width: int = 128
  count_widths: Sequence[int] = (64, 32)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, features, *, train: bool = False):
    if self.seg_widths[-1] != self.count_widths[-1]:
      raise ValueError(f"MPromptHeads: seg_widths[-1] ({self.seg_widths[-1]})"
                       f" must equal count_widths[-1] "
                       f"({self.count_widths[-1]})")
    conv = functools.partial(_ops.conv, dtype=self.dtype,
                             kernel_init=_ops.torch_default_init,
                             bias_init=_zeros)
    bn = functools.partial(_ops.batch_norm, train=train, momentum=0.99,
                           dtype=self.dtype)
    x = features.astype(self.dtype)
    h, w = x.shape[1:3]
    s = x
    for i, width in enumerate(self.seg_widths):
      s = nn.relu(bn(name=f"seg_bn{i}")(conv(width, 3, name=f"seg_conv{i}")(s)))
    self.sow("intermediates", "seg_feat_s", s)
    attention = (jnp.tanh(s) + 1) / 2
    c = nn.relu(bn(name="redc_bn")(conv(self.count_width, 3,
                                        name="redc_conv")(x)))
    self.sow("intermediates", "redc", c)
    branches = []
    for k, d in enumerate(ASPP_DILATIONS):
      a = nn.Conv(self.count_width, (3, 3), padding=((d, d), (d, d)),
                  kernel_dilation=(d, d), dtype=self.dtype,
                  kernel_init=_ops.torch_default_init, bias_init=_zeros,
                  name=f"aspp_conv{k}")(c)
      a = _ops.batch_norm(train=train, momentum=0.9, dtype=self.dtype,
                          name=f"aspp_bn{k}")(a)
      self.sow("intermediates", f"aspp_out{k}", a)
      branches.append(a)
    for a in branches:  # added one by one, as the official loop
      c = c + a * 0.25
    c = nn.relu(c)
    for i, width in enumerate(self.count_widths):
      c = nn.relu(bn(name=f"count_bn{i}")(conv(width, 3,
                                               name=f"count_conv{i}")(c)))
    self.sow("intermediates", "count_feat", c)
    c = conv(1, 1, name="count_head")(c * attention)
    self.sow("intermediates", "count_head_pre_upsample", c)
    density = nn.relu(_ops.resize_bilinear(c, (2 * h, 2 * w),
                                           align_corners=False))
    up = _ops.resize_bilinear(attention, (2 * h, 2 * w), align_corners=False)
    seg = conv(1, 1, name="seg_head")(up)
    self.sow("intermediates", "seg_head_pre_tanh", seg)
    seg = (jnp.tanh(seg) + 1) / 2
    return {"density": density[..., 0].astype(jnp.float32),
            "seg": seg[..., 0].astype(jnp.float32)}


class MPrompt(nn.Module):
  """mPrompt: HRNet (stride-1 second stem conv) + segmenter and regressor.

  Attributes:
    widths: HRNet branch widths ((40, 80, 160, 320) for W40).
    hrnet: other :class:`~counting_jax.models.backbones.hrnet.HRNet`
      attributes (test variants shrink it), as a tuple of (name, value).
    heads: :class:`MPromptHeads` attributes, as a tuple of (name, value).
    dtype: compute dtype (params stay float32; outputs are float32).
    stride: 1 input pixel per density pixel.

  Call: ``image`` float [B, H, W, 3], ImageNet-normalised RGB, H and W
  multiples of 16 -> {"density": float32 [B, H, W] y_hat >= 0 (count
  units), "seg": float32 [B, H, W] m_hat in (0, 1)}.

  Raises:
    ValueError: for a bad image shape.
  """
  widths: Sequence[int] = (40, 80, 160, 320)
  hrnet: tuple = ()
  heads: tuple = ()
  dtype: jnp.dtype = jnp.float32
  stride: int = 1

  @nn.compact
  def __call__(self, image, *, train: bool = False):
    _ops.check_image(image, 16, "MPrompt")
    kwargs = dict(self.hrnet)
    kwargs.setdefault("stem_strides", (2, 1))
    xs, layer1 = HRNet(widths=self.widths, fuse_upsample="nearest",
                       momentum=0.99, return_layer1=True, dtype=self.dtype,
                       name="backbone", **kwargs)(image, train=train)
    size = xs[0].shape[1:3]
    feats = [xs[0]] + [_ops.resize_bilinear(x, size, align_corners=False)
                       for x in xs[1:]] + [layer1]
    return MPromptHeads(dtype=self.dtype, name="heads", **dict(self.heads))(
        jnp.concatenate(feats, -1), train=train)


MPROMPT_HRNET_W40 = functools.partial(MPrompt, widths=(40, 80, 160, 320))
# Test-only tiny variant: every structural feature with few channels.
MPROMPT_TINY = functools.partial(
    MPrompt, widths=(4, 8, 12, 16),
    hrnet=(("stem_width", 8), ("layer1_planes", 4), ("layer1_blocks", 2),
           ("stage_modules", (1, 2, 1)), ("num_blocks", 2)),
    heads=(("seg_widths", (8, 8, 4)), ("count_width", 8),
           ("count_widths", (8, 4))))
