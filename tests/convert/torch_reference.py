"""PyTorch reference modules with the official state_dict key names.

Written for the parity tests (torchvision and timm do not install here):
each module reproduces the layer structure, key names and forward pass of
the official code described in ``../shared/reference/crowd_losses.md``
(sections 3 and 8): torchvision VGG / ResNet, BL / DM-Count / GL VGG19,
HRNet-Image-Classification (nearest fuse upsampling) and its segmentation
variant (bilinear), PML's VGG and HRNet counters, mPrompt's reg-seg network.
Not collected by pytest.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def randomize(module: nn.Module, seed: int = 0,
              bn_gamma=(0.5, 1.5)) -> nn.Module:
  """Random weights and BatchNorm running stats; eval mode.

  Convs get He-normal weights and biases N(0, 0.1); BN weight U(bn_gamma),
  var U(0.5, 1.5), bias/mean N(0, 0.1). HRNet's sums over branches grow
  activations by ~1000 with the default; bn_gamma=(0.2, 0.6) keeps them O(1).
  """
  lo, hi = bn_gamma
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) *
                       (2.0 / fan_in)**0.5)
        if m.bias is not None:
          m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
      elif isinstance(m, nn.BatchNorm2d):
        m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * (hi - lo)
                       + lo)
        m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        m.running_mean.copy_(torch.randn(m.running_mean.shape,
                                         generator=gen) * 0.1)
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen)
                            + 0.5)
        m.num_batches_tracked.fill_(7)
  return module.eval()


# ----------------------------------------------------------------- VGG


def vgg_features(depths, widths, batch_norm, last_pool=False) -> nn.Sequential:
  """torchvision ``make_layers``: conv3x3 [+BN] + ReLU, pools between blocks."""
  layers, channels = [], 3
  for b, (depth, width) in enumerate(zip(depths, widths)):
    if b:
      layers.append(nn.MaxPool2d(2, 2))
    for _ in range(depth):
      layers.append(nn.Conv2d(channels, width, 3, padding=1))
      if batch_norm:
        layers.append(nn.BatchNorm2d(width))
      layers.append(nn.ReLU(inplace=True))
      channels = width
  if last_pool:
    layers.append(nn.MaxPool2d(2, 2))
  return nn.Sequential(*layers)


class TorchVGG(nn.Module):
  """torchvision VGG: ``features`` (with the last pool) + ``classifier``."""

  def __init__(self, depths, widths, batch_norm):
    super().__init__()
    self.features = vgg_features(depths, widths, batch_norm, last_pool=True)
    self.classifier = nn.Sequential(nn.Linear(widths[-1], 10), nn.ReLU(),
                                    nn.Dropout(), nn.Linear(10, 10))

  def forward(self, x):
    """The output of every block (before its pool), as the Flax VGG."""
    outs = []
    for layer in self.features:
      if isinstance(layer, nn.MaxPool2d):
        outs.append(x)
      x = layer(x)
    return outs


class TorchVGG19Density(nn.Module):
  """BL (``'bl'``), DM-Count (``'dm_count'``) or GL (``'gl'``) VGG19."""

  def __init__(self, repo, widths=(64, 128, 256, 512, 512),
               head_widths=(256, 128)):
    super().__init__()
    self.repo = repo
    self.features = vgg_features((2, 2, 4, 4, 4), widths, False)
    h1, h2 = head_widths
    layers = [nn.Conv2d(widths[-1], h1, 3, padding=1), nn.ReLU(inplace=True),
              nn.Conv2d(h1, h2, 3, padding=1), nn.ReLU(inplace=True)]
    if repo == "dm_count":
      self.reg_layer = nn.Sequential(*layers)
      self.density_layer = nn.Sequential(nn.Conv2d(h2, 1, 1), nn.ReLU())
    else:
      self.reg_layer = nn.Sequential(*layers, nn.Conv2d(h2, 1, 1))

  def forward(self, x):
    x = self.features(x)
    if self.repo == "gl":
      x = F.interpolate(x, scale_factor=2)
    else:
      x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    x = self.reg_layer(x)
    if self.repo == "dm_count":
      mu = self.density_layer(x)
      mu_sum = mu.view(mu.shape[0], -1).sum(1).view(-1, 1, 1, 1)
      return mu, mu / (mu_sum + 1e-6)
    return torch.abs(x)


# ----------------------------------------------------------------- PML


class UpSampleP2P(nn.Module):
  """PML's fuse of a coarse (``small``) and a fine (``large``) map."""

  def __init__(self, inc_small, inc_large, ouc, bn):
    super().__init__()
    self.conv_small = nn.Conv2d(inc_small, ouc, 1, bias=not bn)
    self.conv_large = nn.Conv2d(inc_large, ouc, 1, bias=not bn)
    self.fuse = nn.Sequential(nn.Conv2d(ouc, ouc, 3, padding=1, bias=not bn),
                              nn.BatchNorm2d(ouc) if bn else nn.Identity(),
                              nn.ReLU(inplace=True))

  def forward(self, small, large):
    small = F.interpolate(self.conv_small(small), large.shape[-2:],
                          mode="bilinear", align_corners=False)
    return self.fuse(small + self.conv_large(large))


class _FuseLayer(nn.Module):

  def __init__(self, inc_small, inc_large, ouc, bn, post_process):
    super().__init__()
    self.fuse_layers = nn.ModuleList([UpSampleP2P(inc_small, inc_large, ouc,
                                                  bn)])
    self.post_process = (nn.Sequential(
        nn.Conv2d(ouc, ouc, 3, padding=1, bias=False), nn.BatchNorm2d(ouc),
        nn.ReLU(inplace=True)) if post_process else nn.Identity())

  def forward(self, small, large):
    return self.post_process(self.fuse_layers[0](small, large))


def pml_decoder(channels, up):
  return nn.Sequential(
      nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1),
                    nn.Identity(), nn.ReLU(inplace=True)),
      nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1),
                    nn.Identity(), nn.ReLU(inplace=True)),
      nn.Conv2d(channels, up * up, 1), nn.PixelShuffle(up))


class _PMLVGGEncoder(nn.Module):

  def __init__(self, depths, widths, batch_norm):
    super().__init__()
    layers = list(vgg_features(depths, widths, batch_norm).children())
    pools = [k for k, l in enumerate(layers) if isinstance(l, nn.MaxPool2d)]
    split = pools[3]
    self.encoder = nn.ModuleList([nn.Sequential(*layers[:split]),
                                  nn.Sequential(*layers[split:])])
    self.fuse_layer = _FuseLayer(widths[4], widths[3], widths[3], bn=False,
                                 post_process=False)

  def forward(self, x):
    fine = self.encoder[0](x)
    coarse = self.encoder[1](fine)
    return self.fuse_layer(coarse, fine)


class TorchPMLVGG(nn.Module):
  """PML ``Counter('vgg19')`` (or vgg16_bn with depths 2,2,3,3,3, BN)."""

  def __init__(self, depths=(2, 2, 4, 4, 4), widths=(64, 128, 256, 512, 512),
               batch_norm=False):
    super().__init__()
    self.encoder = _PMLVGGEncoder(depths, widths, batch_norm)
    self.decoders = pml_decoder(widths[3], 4)

  def forward(self, x):
    return self.decoders(self.encoder(x)).relu()


# -------------------------------------------------------------- ResNet


class TorchBottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, project=False):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(4 * planes)
    self.downsample = (nn.Sequential(
        nn.Conv2d(inplanes, 4 * planes, 1, stride, bias=False),
        nn.BatchNorm2d(4 * planes)) if project else None)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
  """torchvision ResNet (Bottleneck) with ``fc``; forward returns layer1-4."""

  def __init__(self, stage_sizes=(3, 4, 6, 3), width=64):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = width
    for l, blocks in enumerate(stage_sizes):
      planes = width * 2**l
      layer = []
      for k in range(blocks):
        layer.append(TorchBottleneck(inplanes, planes,
                                     2 if (k == 0 and l) else 1, k == 0))
        inplanes = 4 * planes
      setattr(self, f"layer{l + 1}", nn.Sequential(*layer))
    self.num_layers = len(stage_sizes)
    self.fc = nn.Linear(inplanes, 10)

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    outs = []
    for l in range(self.num_layers):
      x = getattr(self, f"layer{l + 1}")(x)
      outs.append(x)
    return outs


# --------------------------------------------------------------- HRNet


class TorchBasicBlock(nn.Module):

  def __init__(self, planes):
    super().__init__()
    self.conv1 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(y)) + x)


def _conv_bn(cin, cout, k, stride, relu):
  layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
            nn.BatchNorm2d(cout)]
  return nn.Sequential(*(layers + [nn.ReLU()] if relu else layers))


class TorchHRModule(nn.Module):

  def __init__(self, widths, num_blocks, fuse_upsample):
    super().__init__()
    n = len(widths)
    self.fuse_upsample = fuse_upsample
    self.branches = nn.ModuleList([
        nn.Sequential(*[TorchBasicBlock(w) for _ in range(num_blocks)])
        for w in widths])
    self.fuse_layers = nn.ModuleList()
    for i in range(n):
      row = []
      for j in range(n):
        if j > i:
          mods = list(_conv_bn(widths[j], widths[i], 1, 1, False))
          if fuse_upsample == "nearest":
            mods.append(nn.Upsample(scale_factor=2**(j - i), mode="nearest"))
          row.append(nn.Sequential(*mods))
        elif j == i:
          row.append(None)
        else:
          row.append(nn.Sequential(*[
              _conv_bn(widths[j], widths[i] if k == i - j - 1 else widths[j],
                       3, 2, k != i - j - 1) for k in range(i - j)]))
      self.fuse_layers.append(nn.ModuleList(row))

  def forward(self, xs):
    xs = [branch(x) for branch, x in zip(self.branches, xs)]
    out = []
    for i, row in enumerate(self.fuse_layers):
      y = xs[i]
      for j, layer in enumerate(row):
        if j == i:
          continue
        z = layer(xs[j])
        if j > i and self.fuse_upsample == "bilinear":
          z = F.interpolate(z, size=xs[i].shape[-2:], mode="bilinear")
        y = y + z
      out.append(F.relu(y))
    return out


class TorchHRNet(nn.Module):
  """HRNet-Image-Classification backbone (+ a stand-in classifier head).

  ``fuse_upsample='bilinear'`` gives the segmentation variant PML uses.
  """

  def __init__(self, widths=(48, 96, 192, 384), stem_width=64,
               layer1_planes=64, layer1_blocks=4, stage_modules=(1, 4, 3),
               num_blocks=4, fuse_upsample="nearest", head=True):
    super().__init__()
    self.conv1 = nn.Conv2d(3, stem_width, 3, 2, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(stem_width)
    self.conv2 = nn.Conv2d(stem_width, stem_width, 3, 2, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(stem_width)
    self.layer1 = nn.Sequential(*[
        TorchBottleneck(stem_width if k == 0 else 4 * layer1_planes,
                        layer1_planes, 1, k == 0)
        for k in range(layer1_blocks)])
    previous = [4 * layer1_planes]
    for stage, modules in zip((2, 3, 4), stage_modules):
      current = list(widths[:stage])
      transition = []
      for i, w in enumerate(current):
        if i < len(previous):
          transition.append(None if w == previous[i] else
                            _conv_bn(previous[i], w, 3, 1, True))
        else:
          transition.append(nn.Sequential(*[
              _conv_bn(previous[-1], w if j == i - len(previous) else
                       previous[-1], 3, 2, True)
              for j in range(i + 1 - len(previous))]))
      setattr(self, f"transition{stage - 1}", nn.ModuleList(transition))
      setattr(self, f"stage{stage}", nn.Sequential(*[
          TorchHRModule(current, num_blocks, fuse_upsample)
          for _ in range(modules)]))
      previous = current
    if head:  # Stand-in for incre/downsamp/final layers + classifier.
      self.incre_modules = nn.ModuleList([nn.Conv2d(w, 4, 1) for w in widths])
      self.final_layer = nn.Sequential(nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8))
      self.classifier = nn.Linear(8, 10)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.relu(self.bn2(self.conv2(x)))
    xs = [self.layer1(x)]
    for stage in (2, 3, 4):
      transition = getattr(self, f"transition{stage - 1}")
      xs = [xs[i] if t is None else t(xs[-1]) for i, t in enumerate(
          transition)]
      for module in getattr(self, f"stage{stage}"):
        xs = module(xs)
    return xs


class _PMLHRNetEncoder(nn.Module):

  def __init__(self, **hrnet):
    super().__init__()
    self.encoder = TorchHRNet(fuse_upsample="bilinear", head=False, **hrnet)
    w0, w1 = hrnet.get("widths", (48, 96))[:2]
    self.fuse_layer = _FuseLayer(w1, w0, w0, bn=True, post_process=True)

  def forward(self, x):
    xs = self.encoder(x)
    return self.fuse_layer(xs[1], xs[0])


class TorchPMLHRNet(nn.Module):
  """PML ``Counter('hrnet_w48')``."""

  def __init__(self, **hrnet):
    super().__init__()
    self.encoder = _PMLHRNetEncoder(**hrnet)
    w0 = hrnet.get("widths", (48,))[0]
    self.decoders = pml_decoder(w0, 2)

  def forward(self, x):
    return self.decoders(self.encoder(x)).relu()


# ----------------------------------------------------------------- mPrompt


def _conv_bn_relu(cin, cout, momentum=0.01):
  return [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout,
                                                        momentum=momentum),
          nn.ReLU()]


class TorchMPrompt(nn.Module):
  """The official reg-seg network: HRNet (second stem conv stride 1) and
  its heads, official key names (module-level keys, no prefix)."""

  def __init__(self, widths, heads, **hrnet):
    super().__init__()
    self.hrnet = TorchHRNet(widths=widths, head=False, **hrnet)
    stem = self.hrnet.conv2
    self.hrnet.conv2 = nn.Conv2d(stem.in_channels, stem.out_channels, 3, 1, 1,
                                 bias=False)
    cin = sum(widths) + 4 * hrnet["layer1_planes"]
    s1, s2, s3 = heads["seg"]
    self.last_layer_seg = nn.Sequential(*_conv_bn_relu(cin, s1),
                                        *_conv_bn_relu(s1, s2),
                                        *_conv_bn_relu(s2, s3))
    self.segHead = nn.Conv2d(s3, 1, 1)
    r = heads["redc"]
    aspp = []
    for d in (2, 4, 6, 8):
      aspp += [nn.Conv2d(r, r, 3, padding=d, dilation=d), nn.BatchNorm2d(r)]
    self.aspp = nn.ModuleList(aspp)
    self.redc_layer = nn.Sequential(*_conv_bn_relu(cin, r))
    c1, c2 = heads["count"]
    self.last_layer_count = nn.Sequential(*_conv_bn_relu(r, c1),
                                          *_conv_bn_relu(c1, c2))
    self.countHead = nn.Conv2d(c2, 1, 1)

  def state_dict(self, *args, **kwargs):  # official keys: no "hrnet." prefix
    return {k.removeprefix("hrnet."): v
            for k, v in super().state_dict(*args, **kwargs).items()}

  def forward(self, x):
    h = self.hrnet
    x = F.relu(h.bn1(h.conv1(x)))
    x = F.relu(h.bn2(h.conv2(x)))
    layer1 = h.layer1(x)
    xs = [layer1]
    for stage in (2, 3, 4):
      transition = getattr(h, f"transition{stage - 1}")
      xs = [xs[i] if t is None else t(xs[-1]) for i, t in enumerate(
          transition)]
      for module in getattr(h, f"stage{stage}"):
        xs = module(xs)
    size = xs[0].shape[-2:]
    x = torch.cat([xs[0]] + [F.interpolate(v, size=size, mode="bilinear",
                                           align_corners=False)
                             for v in xs[1:]] + [layer1], 1)
    att = (torch.tanh(self.last_layer_seg(x)) + 1) / 2
    x = self.redc_layer(x)
    outs = [self.aspp[2 * k + 1](self.aspp[2 * k](x)) for k in range(4)]
    for o in outs:
      x = x + o * 0.25
    x = F.relu(self.last_layer_count(F.relu(x)))
    x = self.countHead(x * att)
    full = (2 * size[0], 2 * size[1])
    x = F.relu(F.interpolate(x, size=full, mode="bilinear",
                             align_corners=False))
    seg = self.segHead(F.interpolate(att, size=full, mode="bilinear",
                                     align_corners=False))
    return x, (torch.tanh(seg) + 1) / 2
