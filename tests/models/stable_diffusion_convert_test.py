"""Round trips of the SD-1.5 feature-extractor converters on tiny random
models: diffusers / transformers ``.safetensors`` files and ldm single-file
checkpoints (SD-1.5 and T2ICount prefixes) -> ``counting-jax convert`` ->
orbax -> Flax outputs equal to the PyTorch modules'."""

from __future__ import annotations

import re
import warnings

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")
import safetensors.numpy  # pylint: disable=g-import-not-at-top,wrong-import-position

import sd_reference as ref  # pylint: disable=g-import-not-at-top,wrong-import-position

from counting_jax import convert  # pylint: disable=g-import-not-at-top,wrong-import-position
from counting_jax.convert import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from counting_jax.convert import stable_diffusion as conv  # pylint: disable=g-import-not-at-top,wrong-import-position
from counting_jax.models import stable_diffusion as sd  # pylint: disable=g-import-not-at-top,wrong-import-position

_PER = sd.UNetConfig.tiny().layers_per_block + 1
_LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2",
               "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
               "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _ldm_unet_key(key: str) -> str:
  """diffusers UNet2DConditionModel key -> CompVis ldm UNetModel key."""
  def resnet(rest):
    head, _, tail = rest.partition(".")
    return f"{_LDM_RESNET[head]}.{tail}"
  fixed = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0",
           "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
           "time_embedding.linear_2": "time_embed.2"}
  for old, new in fixed.items():
    if key.startswith(old + "."):
      return new + key[len(old):]
  m = re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|"
               r"upsamplers)\.(\d+)\.(.*)", key)
  if m:
    side, b, kind, j, rest = m.groups()
    b, j = int(b), int(j)
    if side == "down":
      if kind == "downsamplers":
        return f"input_blocks.{(b + 1) * _PER}.0.op.{rest[len('conv.'):]}"
      i = 1 + b * _PER + j
      return (f"input_blocks.{i}.0.{resnet(rest)}" if kind == "resnets" else
              f"input_blocks.{i}.1.{rest}")
    if kind == "upsamplers":
      slot = 1 if b == 0 else 2  # the first up block has no attention.
      return f"output_blocks.{b * _PER + _PER - 1}.{slot}.{rest}"
    i = b * _PER + j
    return (f"output_blocks.{i}.0.{resnet(rest)}" if kind == "resnets" else
            f"output_blocks.{i}.1.{rest}")
  m = re.match(r"mid_block\.(resnets|attentions)\.(\d)\.(.*)", key)
  kind, j, rest = m.groups()
  if kind == "attentions":
    return f"middle_block.1.{rest}"
  return f"middle_block.{2 * int(j)}.{resnet(rest)}"


def _ldm_vae_encoder(state: dict) -> dict:
  """diffusers AutoencoderKL encoder + quant_conv -> ldm keys (1x1 conv
  attention weights); decoder keys are left out except two ldm names."""
  out = {}
  attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
          "to_out.0": "proj_out"}
  for key, value in state.items():
    if not key.startswith(("encoder.", "quant_conv.")):
      continue
    new = key.replace("conv_norm_out", "norm_out")
    new = re.sub(r"down_blocks\.(\d+)\.resnets\.(\d+)\.", r"down.\1.block.\2.",
                 new)
    new = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.",
                 r"down.\1.downsample.", new)
    new = new.replace("conv_shortcut", "nin_shortcut")
    new = re.sub(r"mid_block\.resnets\.(\d)\.",
                 lambda m: f"mid.block_{int(m.group(1)) + 1}.", new)
    if ".mid_block.attentions.0." in new:
      name, leaf = new.split(".mid_block.attentions.0.")[1].rsplit(".", 1)
      new = f"encoder.mid.attn_1.{attn[name]}.{leaf}"
      if leaf == "weight" and name != "group_norm":
        value = value[:, :, None, None]
    out[new] = value
  return out


def _ldm_checkpoint(style: str) -> dict:
  """The three tiny models as one ldm single-file state_dict."""
  if style == "sd":
    prefixes = ("model.diffusion_model.", "first_stage_model.",
                "cond_stage_model.transformer.text_model.")
  else:  # T2ICount's Count: unet.unet / vae / clip.transformer / decoder.
    prefixes = ("unet.unet.diffusion_model.", "vae.",
                "clip.transformer.text_model.")
  out = {prefixes[0] + _ldm_unet_key(k): v
         for k, v in ref.state_dict(ref.torch_unet()).items()}
  out.update({prefixes[1] + k: v for k, v in
              _ldm_vae_encoder(ref.state_dict(ref.torch_vae())).items()})
  out.update({prefixes[2] + k: v
              for k, v in ref.state_dict(ref.torch_clip()).items()})
  zero = np.zeros((4, 4), np.float32)
  if style == "sd":
    out.update({"first_stage_model.decoder.conv_in.weight": zero,
                "first_stage_model.post_quant_conv.bias": zero[0],
                "betas": zero[0], "model_ema.decay": zero[0, 0]})
  else:
    out.update({"vae.post_quant_conv.bias": zero[0],
                "decoder.upsample1.conv1.0.weight": zero + 1,
                "decoder.regressor.reg_head.4.bias": zero[0] + 2})
  return out


def _save(state: dict, path) -> str:
  safetensors.numpy.save_file({k: np.ascontiguousarray(v)
                               for k, v in state.items()}, str(path))
  return str(path)


def _cli(tmp_path, checkpoint: str, model: str):
  out = tmp_path / model
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    assert cli.main(["--checkpoint", checkpoint, "--model", model, "--out",
                     str(out)]) == 0
  return convert.load_variables(out)


def _check_outputs(vae=None, unet=None, clip=None):
  if vae is not None:
    ref.assert_close(ref.flax_apply("vae")(vae), ref.torch_vae_mean(),
                     what="vae")
  if unet is not None:
    out = ref.flax_apply("unet")(unet)
    taps, maps = ref.torch_unet_features()
    for got, want in zip(out.taps, taps):
      ref.assert_close(got, want, what="tap")
    ref.assert_close(out.cross_attention["up"][-1], maps["up"][-1],
                     what="attn2")
  if clip is not None:
    ref.assert_close(ref.flax_apply("clip")(clip), ref.torch_clip_states(),
                     what="clip")


def test_ldm_test_keys_are_ldm_layout():
  """The test's ldm renaming is what diffusers' own ldm importer reads."""
  from diffusers.loaders import single_file_utils as sfu  # pylint: disable=g-import-not-at-top
  unet = ref.torch_unet()
  original = ref.state_dict(unet)
  ldm = {"model.diffusion_model." + _ldm_unet_key(k): torch.from_numpy(v)
         for k, v in original.items()}
  back = sfu.convert_ldm_unet_checkpoint(ldm, dict(unet.config))
  assert sorted(back) == sorted(original)
  for k, v in back.items():
    np.testing.assert_array_equal(v.numpy(), original[k])


def test_diffusers_and_transformers_safetensors_round_trip(tmp_path):
  files = {
      "sd15_vae_encoder_tiny": ref.state_dict(ref.torch_vae()),
      "sd15_unet_tiny": ref.state_dict(ref.torch_unet()),
      # As saved by transformers 4 (``text_model.`` prefix).
      "clip_vit_l14_text_tiny": {"text_model." + k: v for k, v in
                                 ref.state_dict(ref.torch_clip()).items()},
  }
  got = {m: _cli(tmp_path, _save(s, tmp_path / f"{m}.safetensors"), m)
         for m, s in files.items()}
  _check_outputs(got["sd15_vae_encoder_tiny"], got["sd15_unet_tiny"],
                 got["clip_vit_l14_text_tiny"])


def test_old_vae_attention_names_and_clip_model_file():
  state = ref.state_dict(ref.torch_vae())
  old = {}
  names = {"to_q": "query", "to_k": "key", "to_v": "value",
           "to_out.0": "proj_attn"}
  for k, v in state.items():
    for new, dep in names.items():
      k = k.replace(f"attentions.0.{new}.", f"attentions.0.{dep}.")
    old[k] = v
  assert old != state
  a = conv.convert_vae_encoder(old, sd.VAEConfig.tiny())
  b = conv.convert_vae_encoder(state, sd.VAEConfig.tiny())
  jax.tree.map(np.testing.assert_array_equal, a, b)
  clip = ref.state_dict(ref.torch_clip())
  whole = {"text_model." + k: v for k, v in clip.items()}
  whole.update({"vision_model.post_layernorm.weight": np.ones(3),
                "logit_scale": np.ones(())})
  jax.tree.map(np.testing.assert_array_equal,
               conv.convert_clip_text(whole, sd.CLIPTextConfig.tiny()),
               conv.convert_clip_text(clip, sd.CLIPTextConfig.tiny()))


def test_ldm_single_file_round_trip(tmp_path):
  """SD-1.5 ldm layout through the command line: all three modules."""
  path = _save(_ldm_checkpoint("sd"), tmp_path / "sd15.safetensors")
  got = _cli(tmp_path, path, "sd15_feature_extractor_tiny")
  assert sorted(got) == ["text_encoder", "unet", "vae_encoder"]
  _check_outputs(got["vae_encoder"], got["unet"], got["text_encoder"])
  # A part alone from the same file.
  _check_outputs(unet=_cli(tmp_path, path, "sd15_unet_tiny"))


def test_t2icount_prefixes_and_decoder_passthrough():
  state = _ldm_checkpoint("t2icount")
  tiny = dict(vae=sd.VAEConfig.tiny(), unet=sd.UNetConfig.tiny(),
              clip=sd.CLIPTextConfig.tiny())
  variables, decoder = conv.convert_ldm(state, **tiny)
  assert sorted(decoder) == ["decoder.regressor.reg_head.4.bias",
                             "decoder.upsample1.conv1.0.weight"]
  assert decoder["decoder.upsample1.conv1.0.weight"] is state[
      "decoder.upsample1.conv1.0.weight"]
  sd_vars, sd_decoder = conv.convert_ldm(_ldm_checkpoint("sd"), **tiny)
  assert not sd_decoder
  jax.tree.map(np.testing.assert_array_equal, variables, sd_vars)
  with pytest.warns(UserWarning, match="2 'decoder"):
    conv.CONVERTERS["sd15_feature_extractor_tiny"](state)


def test_bad_checkpoints_are_refused():
  tiny = dict(vae=sd.VAEConfig.tiny(), unet=sd.UNetConfig.tiny(),
              clip=sd.CLIPTextConfig.tiny())
  state = _ldm_checkpoint("sd")
  with pytest.raises(ValueError, match="belong to no known part.*extra.w"):
    conv.convert_ldm({**state, "extra.w": np.zeros(1)}, **tiny)
  key = "model.diffusion_model.output_blocks.4.1.proj_in.weight"
  with pytest.raises(ValueError, match=r"missing keys \(1\)"):
    conv.convert_ldm({k: v for k, v in state.items() if k != key}, **tiny)
  with pytest.raises(ValueError, match="mis-shaped"):
    conv.convert_ldm({**state, key: state[key][:1]}, **tiny)
  with pytest.raises(ValueError, match="no clip tensors"):
    conv.convert_ldm({k: v for k, v in state.items()
                      if not k.startswith("cond_stage")}, **tiny)
  with pytest.raises(ValueError, match="unexpected keys"):
    conv.convert_unet({**ref.state_dict(ref.torch_unet()), "foo.w": 0},
                      sd.UNetConfig.tiny())


def test_whole_t2icount_checkpoint():
  """SD-1.5 parts + HSCM decoder of one T2ICount file -> the T2ICount
  model's tree, every tensor where the official key says. (The tiny test
  UNet and CLIP differ in width, so this model converts but would not
  run; the decoder's shapes come from the UNet's taps.)"""
  from counting_jax.convert import t2icount as t2i_conv  # pylint: disable=g-import-not-at-top
  from counting_jax.convert import t2icount_keys  # pylint: disable=g-import-not-at-top
  from counting_jax.models import t2icount as t2i  # pylint: disable=g-import-not-at-top
  tiny = dict(vae=sd.VAEConfig.tiny(), unet=sd.UNetConfig.tiny(),
              clip=sd.CLIPTextConfig.tiny())
  model = t2i.T2ICount(**tiny, decoder_dims=(32, 16, 16), decoder_heads=2)
  decoder = t2i_conv._abstract_decoder(model)["params"]  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  decoder = jax.tree.map(
      lambda s: rng.standard_normal(s.shape).astype(np.float32), decoder)
  # The official tensors, written from the Flax ones by inverting each rule.
  state = {k: v for k, v in _ldm_checkpoint("t2icount").items()
           if not k.startswith("decoder.")}
  for rule in t2icount_keys.hscm_decoder_rules("decoder."):
    leaf = decoder
    for part in rule.target[1:]:
      leaf = leaf[part]
    state[rule.source] = {"conv": lambda a: a.transpose(3, 2, 0, 1),
                          "linear": lambda a: a.T,
                          "copy": lambda a: a}[rule.layout](leaf)
  got = t2i_conv.convert_t2icount(state, model=model)
  assert sorted(got["params"]) == ["clip", "decoder", "unet", "vae"]
  jax.tree.map(np.testing.assert_array_equal, got["params"]["decoder"],
               decoder)
  parts, _ = conv.convert_ldm(state, **tiny)
  for ours, theirs in (("vae", "vae_encoder"), ("unet", "unet"),
                       ("clip", "text_encoder")):
    jax.tree.map(np.testing.assert_array_equal, got["params"][ours],
                 parts[theirs]["params"])
  with pytest.raises(ValueError, match="not a T2ICount checkpoint"):
    t2i_conv.convert_t2icount(_ldm_checkpoint("sd"), model=model)
  assert {"t2icount", "t2icount_tiny"} <= set(convert.MODEL_NAMES)
