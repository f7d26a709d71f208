"""Sample transforms that move points together with the pixels.

Each transform maps a sample dict (``counting_jax.data.sample``) to a new one
and is exact in the continuous pixel convention of ``counting_jax.grid``
(pixel (r, c) spans [c, c+1) x [r, r+1); an H x W image spans the closed
[0, W] x [0, H], a point on the right or bottom edge belonging to the last
pixel): a point on pixel (r, c) before the transform lies on the pixel that
pixel (r, c) moved to afterwards (a point exactly on an edge between two
pixels may land on the edge's other side after a flip, the same continuous
position). Points on the border are kept wherever their pixel stays in the
image: flips map x = 0 to x = W and back, crops keep a point when its pixel
is in the crop, resizing maps x = W to x = W' exactly. Random transforms take
a ``numpy.random.Generator`` (grain's ``random_map`` passes one seeded per
element), so runs are reproducible.

Optional per-pixel fields move with the pixels: ``masks`` float32 [H, W, C]
(method masks; nearest-neighbour when resized) and ``density`` float32
[H, W] (a pixel density map, objects per pixel, e.g. T2ICount's full-image
GT map; resized bicubically and scaled by the area ratio so its sum is
kept, zero-padded).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from PIL import ImageEnhance

__all__ = ["crop", "random_crop", "hflip", "vflip", "random_flip", "resize",
           "random_rescale", "pad_to_size", "pad_to_multiple",
           "color_jitter"]


def _with(sample, **fields):
  out = dict(sample)
  out.update(fields)
  return out


def _pixels(points, h: int, w: int):
  """int [N, 2] (col, row) pixel of each point of an h x w image: a point on
  the right or bottom edge belongs to the last column or row."""
  pix = np.floor(points).astype(np.int64)
  return np.minimum(pix, np.array([w - 1, h - 1]))


def _masks(sample, fn, density_fn=None):
  """``{"masks": fn(masks)}`` when the sample holds method masks (float32
  [H, W, C], moved exactly like the image), and ``{"density":
  (density_fn or fn)(density)}`` when it holds a pixel density map (float32
  [H, W]); ``{}`` for neither."""
  out = {}
  if "masks" in sample:
    out["masks"] = np.ascontiguousarray(fn(sample["masks"]))
  if "density" in sample:
    out["density"] = np.ascontiguousarray(
        (density_fn or fn)(np.asarray(sample["density"], np.float32)))
  return out


def crop(sample, top: int, left: int, height: int, width: int):
  """Crops pixels [top, top+height) x [left, left+width).

  A point is kept when its pixel is in the crop (a point on the image's right
  or bottom edge belongs to the last pixel, so a crop reaching that edge keeps
  it, on its own edge); the others are removed (they are outside the new
  image). Boxes are clipped and empty ones removed.

  Raises:
    ValueError: naming the image when the crop is not inside it.
  """
  h, w = sample["image"].shape[:2]
  if not (0 <= top and top + height <= h and 0 <= left and left + width <= w):
    raise ValueError(f"{sample.get('image_id', '?')}: crop {(top, left, height, width)} "
                     f"outside the {h}x{w} image")
  image = sample["image"][top:top + height, left:left + width]
  pix = _pixels(sample["points"], h, w)
  keep = ((pix[:, 0] >= left) & (pix[:, 0] < left + width)
          & (pix[:, 1] >= top) & (pix[:, 1] < top + height))
  pts = sample["points"] - np.array([left, top], np.float32)
  boxes = sample["boxes"] - np.array([left, top, left, top], np.float32)
  boxes = np.clip(boxes, 0, np.array([width, height, width, height],
                                     np.float32))
  boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
  return _with(sample, image=np.ascontiguousarray(image), points=pts[keep],
               boxes=boxes, **_masks(sample, lambda m: m[
                   top:top + height, left:left + width]))


def random_crop(sample, size, rng: np.random.Generator):
  """Uniformly placed crop of ``size`` (h, w); images smaller than ``size``
  are first zero-padded at the bottom/right (:func:`pad_to_size`)."""
  ch, cw = size
  sample = pad_to_size(sample, max(ch, sample["image"].shape[0]),
                       max(cw, sample["image"].shape[1]))
  h, w = sample["image"].shape[:2]
  top = int(rng.integers(0, h - ch + 1))
  left = int(rng.integers(0, w - cw + 1))
  return crop(sample, top, left, ch, cw)


def hflip(sample):
  """Mirrors left-right: x -> W - x (pixel c -> W - 1 - c)."""
  w = sample["image"].shape[1]
  pts = sample["points"].copy()
  pts[:, 0] = w - pts[:, 0]
  b = sample["boxes"].copy()
  b[:, [0, 2]] = w - sample["boxes"][:, [2, 0]]
  return _with(sample, image=np.ascontiguousarray(sample["image"][:, ::-1]),
               points=pts, boxes=b, **_masks(sample, lambda m: m[:, ::-1]))


def vflip(sample):
  """Mirrors top-bottom: y -> H - y."""
  h = sample["image"].shape[0]
  pts = sample["points"].copy()
  pts[:, 1] = h - pts[:, 1]
  b = sample["boxes"].copy()
  b[:, [1, 3]] = h - sample["boxes"][:, [3, 1]]
  return _with(sample, image=np.ascontiguousarray(sample["image"][::-1]),
               points=pts, boxes=b, **_masks(sample, lambda m: m[::-1]))


def random_flip(sample, rng: np.random.Generator, *, horizontal: bool = True,
                vertical: bool = False):
  """Each asked-for flip (horizontal, vertical) with probability 1/2."""
  if horizontal and rng.random() < 0.5:
    sample = hflip(sample)
  if vertical and rng.random() < 0.5:
    sample = vflip(sample)
  return sample


def _shift_hue(img: Image.Image, factor: float) -> Image.Image:
  # PIL's 8-bit HSV; hue rotates by int(factor * 255) (truncated) mod 256.
  h, sat, val = img.convert("HSV").split()
  shift = int(factor * 255)
  h = Image.fromarray(
      ((np.asarray(h, np.int64) + shift) % 256).astype(np.uint8), "L")
  return Image.merge("HSV", (h, sat, val)).convert("RGB")


def color_jitter(sample, rng: np.random.Generator, *,
                 brightness: float = 0.0, contrast: float = 0.0,
                 saturation: float = 0.0, hue: float = 0.0):
  """Random brightness, contrast, saturation and hue of the uint8 image, in a
  random order; points, boxes and masks are unchanged.

  As torchvision's ``ColorJitter`` on PIL images (the mPrompt code's
  ``ColorJitter(0.2, 0.2, 0.2, 0.2)``): factors uniform in
  [max(0, 1 - v), 1 + v] for brightness / contrast / saturation (PIL
  ``ImageEnhance``: a blend with black, with the grey image's rounded mean,
  with the grey image) and uniform in [-hue, hue] for the hue (a rotation of
  PIL's 8-bit HSV hue by int(255 * factor)); an argument of 0 skips that
  adjustment. The draws come from ``rng``, so a seeded generator gives the
  same image.

  Raises:
    ValueError: for a negative argument or ``hue`` above 0.5.
  """
  args = dict(brightness=brightness, contrast=contrast,
              saturation=saturation, hue=hue)
  if min(args.values()) < 0 or hue > 0.5:
    raise ValueError(f"color_jitter: arguments must be >= 0 and hue <= 0.5, "
                     f"got {args}")
  ops = []
  for name, enhance in (("brightness", ImageEnhance.Brightness),
                        ("contrast", ImageEnhance.Contrast),
                        ("saturation", ImageEnhance.Color)):
    if args[name] > 0:
      f = rng.uniform(max(0.0, 1.0 - args[name]), 1.0 + args[name])
      ops.append(lambda im, e=enhance, f=f: e(im).enhance(f))
  if hue > 0:
    f = rng.uniform(-hue, hue)
    ops.append(lambda im, f=f: _shift_hue(im, f))
  if not ops:
    return sample
  img = Image.fromarray(np.asarray(sample["image"], np.uint8), "RGB")
  for i in rng.permutation(len(ops)):
    img = ops[i](img)
  return _with(sample, image=np.asarray(img, np.uint8).copy())


def resize(sample, height: int, width: int):
  """Bilinear resize to (height, width); points and boxes scaled by the exact
  per-axis factors (W'/W, H'/H), so point counts never change (computed in
  float64, so x = W maps to x = W' exactly and border points stay inside).
  Method masks are resized per channel with nearest-neighbour sampling
  (binary masks stay binary); a pixel ``density`` map bicubically (PIL,
  float) and multiplied by (H W) / (H' W'), so its sum is kept up to the
  interpolation (as the T2ICount code's cv2 bicubic resize divided by s²;
  bicubic overshoot can leave small negative values, not clipped, as
  there).
  """
  h, w = sample["image"].shape[:2]
  if height <= 0 or width <= 0:
    raise ValueError(f"resize to non-positive size {(height, width)}")
  image = np.asarray(Image.fromarray(sample["image"]).resize(
      (width, height), Image.BILINEAR))
  new, old = np.array([width, height], np.float64), np.array([w, h],
                                                             np.float64)
  pts = np.clip(sample["points"] * new / old, 0.0, new).astype(np.float32)
  boxes = (sample["boxes"] * np.tile(new, 2) / np.tile(old, 2)).astype(
      np.float32)
  return _with(sample, image=image, points=pts, boxes=boxes,
               **_masks(sample, lambda m: _resize_masks(m, height, width),
                        lambda d: _resize_density(d, height, width)))


def _resize_masks(masks, height, width):
  return np.stack([np.asarray(Image.fromarray(
      np.ascontiguousarray(masks[..., c], np.float32)).resize(
          (width, height), Image.NEAREST)) for c in range(masks.shape[-1])],
                  axis=-1)


def _resize_density(density, height, width):
  h, w = density.shape
  out = np.asarray(Image.fromarray(np.ascontiguousarray(
      density, np.float32)).resize((width, height), Image.BICUBIC),
                   np.float32)
  return out * np.float32(h * w / (height * width))


def random_rescale(sample, scale_range, rng: np.random.Generator,
                   prob: float = 1.0):
  """Resize by a factor drawn uniformly from ``scale_range`` (lo, hi), with
  probability ``prob`` (T2ICount officially: 0.5); else unchanged. With
  ``prob`` >= 1 no coin is drawn (the draws of ``rng`` are as before).

  Raises:
    ValueError: for ``prob`` outside [0, 1].
  """
  if not 0.0 <= prob <= 1.0:
    raise ValueError(f"input.scale_prob must be in [0, 1], got {prob}")
  if prob < 1.0 and rng.random() >= prob:
    return sample
  lo, hi = scale_range
  f = float(rng.uniform(lo, hi))
  h, w = sample["image"].shape[:2]
  return resize(sample, max(1, round(h * f)), max(1, round(w * f)))


def pad_to_size(sample, height: int, width: int, *, centre: bool = False):
  """Zero-pads to (height, width), at the bottom/right or, with ``centre``,
  equally on both sides (the odd pixel at the bottom/right).

  With ``centre`` the image, masks, points, boxes and ``split_x`` (when
  present) move by the offset
  (left = (width - W) // 2, top = (height - H) // 2 input pixels). A point on
  the old right (bottom) edge, x = W (y = H), which belonged to the last image
  pixel, moves one float32 step left (up) so that it stays on that pixel
  rather than on the padding (``counting_jax.grid``). Points and boxes keep
  their number, so the count is unchanged.

  Raises:
    ValueError: naming the image when it is larger than (height, width).
  """
  h, w = sample["image"].shape[:2]
  if (h, w) == (height, width):
    return sample
  if height < h or width < w:
    raise ValueError(f"{sample.get('image_id', '?')}: cannot pad the {h}x{w} "
                     f"image to the smaller {height}x{width}")
  top, left = ((height - h) // 2, (width - w) // 2) if centre else (0, 0)
  image = np.zeros((height, width, 3), np.uint8)
  image[top:top + h, left:left + w] = sample["image"]
  pts = sample["points"].astype(np.float32, copy=True)
  for axis, old, new, off in ((0, w, width, left), (1, h, height, top)):
    edge = pts[:, axis] == old
    pts[:, axis] += np.float32(off)
    if new > old:
      pts[edge, axis] = np.nextafter(np.float32(old + off), np.float32(0))
  fields = {}
  if "split_x" in sample:  # the synthetic set's boundary between halves
    fields["split_x"] = np.asarray(sample["split_x"]) + left
  if "boxes" in sample:
    fields["boxes"] = (np.asarray(sample["boxes"], np.float32)
                       + np.array([left, top, left, top], np.float32))

  def pad(m):
    out = np.zeros((height, width) + m.shape[2:], m.dtype)
    out[top:top + h, left:left + w] = m
    return out

  return _with(sample, image=image, points=pts, **fields,
               **_masks(sample, pad))


def pad_to_multiple(sample, multiple: int, *, centre: bool = False):
  """Zero-pads so H and W are multiples of ``multiple`` (models need H, W
  divisible by their total down-sampling), at the bottom/right or, with
  ``centre``, on both sides (:func:`pad_to_size`)."""
  h, w = sample["image"].shape[:2]
  return pad_to_size(sample, -(-h // multiple) * multiple,
                     -(-w // multiple) * multiple, centre=centre)
