"""Backbone registry, output strides and full-size parameter counts.

The counts are those of the published networks without their classifiers
(torchvision VGG19 ``features``: 20,024,384; torchvision ResNet-50 without
``fc``: 25,557,032 - 2,049,000). Numerical parity with PyTorch is tested in
``tests/convert/``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from counting_jax.models import backbones


def _abstract(model, size=64):
  image = jnp.zeros((1, size, size, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), image))
  outputs = jax.eval_shape(lambda v: model.apply(v, image), variables)
  return variables, outputs


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,params,strides,channels", [
    ("vgg19", 20_024_384, (1, 2, 4, 8, 16), (64, 128, 256, 512, 512)),
    ("vgg16_bn", 14_723_136, (1, 2, 4, 8, 16), (64, 128, 256, 512, 512)),
    ("resnet50", 23_508_032, (4, 8, 16, 32), (256, 512, 1024, 2048)),
    ("hrnet_w48", None, (4, 8, 16, 32), (48, 96, 192, 384)),
])
def test_full_size(name, params, strides, channels):
  variables, outputs = _abstract(backbones.get_backbone(name))
  if params is not None:
    assert _count(variables["params"]) == params
  assert tuple(64 // o.shape[1] for o in outputs) == strides
  assert tuple(o.shape[-1] for o in outputs) == channels


@pytest.mark.parametrize("name,strides", [
    ("vgg19_tiny", (1, 2, 4, 8, 16)),
    ("vgg16_bn_tiny", (1, 2, 4, 8, 16)),
    ("resnet50_tiny", (4, 8, 16, 32)),
    ("hrnet_tiny", (4, 8, 16, 32)),
])
def test_tiny_variants_keep_the_strides(name, strides):
  _, outputs = _abstract(backbones.get_backbone(name))
  assert tuple(64 // o.shape[1] for o in outputs) == strides


def test_hrnet_options():
  model = backbones.get_backbone("hrnet_tiny", stem_strides=(2, 1))
  _, outputs = _abstract(model)
  assert outputs[0].shape[1] == 32  # mPrompt's stride-2 branch 0.
  with pytest.raises(ValueError, match="fuse_upsample"):
    _abstract(backbones.get_backbone("hrnet_tiny", fuse_upsample="cubic"))


def test_bfloat16_outputs_and_float32_params():
  variables, outputs = _abstract(backbones.get_backbone("hrnet_tiny",
                                                        dtype=jnp.bfloat16))
  assert all(o.dtype == jnp.bfloat16 for o in outputs)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))


def test_unknown_name():
  with pytest.raises(ValueError, match="unknown backbone 'vgg11'; valid"):
    backbones.get_backbone("vgg11")


def test_frozen_layers_stop_gradients_without_changing_the_rest():
  from counting_jax.models.backbones import resnet as resnet_lib  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 32, 32, 3))
  nets = [resnet_lib.ResNet(stage_sizes=(1, 1), width=4, num_layers=2,
                            frozen_layers=f) for f in (0, 1)]
  variables = nets[0].init(jax.random.PRNGKey(1), x)

  def grads(net):
    def loss(p):
      out = net.apply({**variables, "params": p}, x)
      return out[-1].sum() + out[0].sum()
    return jax.grad(loss)(variables["params"])

  free, frozen = grads(nets[0]), grads(nets[1])
  for name in frozen:
    leaves = jax.tree_util.tree_leaves(frozen[name])
    if name in ("conv1", "bn1") or name.startswith("layer1_"):
      assert all(not jnp.any(g) for g in leaves), name
      assert any(jnp.any(g) for g in jax.tree_util.tree_leaves(free[name]))
    else:
      for a, b in zip(leaves, jax.tree_util.tree_leaves(free[name])):
        assert jnp.allclose(a, b), name
  outs = [net.apply(variables, x)[-1] for net in nets]
  assert jnp.array_equal(outs[0], outs[1])
