"""Parity of the Flax SD-1.5 feature extractor with diffusers' AutoencoderKL
and UNet2DConditionModel and transformers' CLIPTextModel (tiny random
configurations, weights converted from the diffusers / transformers
state_dicts)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import sd_reference as ref  # pylint: disable=g-import-not-at-top,wrong-import-position

from counting_jax.convert import stable_diffusion as conv  # pylint: disable=g-import-not-at-top,wrong-import-position
from counting_jax.models import stable_diffusion as sd  # pylint: disable=g-import-not-at-top,wrong-import-position


def _unet_variables():
  return conv.convert_unet(ref.state_dict(ref.torch_unet()),
                           sd.UNetConfig.tiny())


def test_vae_encoder_matches_diffusers():
  variables = conv.convert_vae_encoder(ref.state_dict(ref.torch_vae()),
                                       sd.VAEConfig.tiny())
  mean = ref.flax_apply("vae")(variables)
  assert mean.shape == (ref.BATCH, ref.IMAGE // 8, ref.IMAGE // 8, 4)
  ref.assert_close(mean, ref.torch_vae_mean(), what="posterior mean")


def test_unet_taps_and_cross_attention_match_diffusers():
  out = ref.flax_apply("unet")(_unet_variables())
  taps, maps = ref.torch_unet_features()
  s, c = ref.LATENT, sd.UNetConfig.tiny().block_out_channels
  assert [t.shape for t in out.taps] == [
      (2, s // 8, s // 8, c[3]), (2, s // 4, s // 4, c[2]),
      (2, s // 2, s // 2, c[1]), (2, s, s, c[0])]
  for name, got, want in zip("ABCD", out.taps, taps):
    # Exact GELU: tanh-approximate GELU in GEGLU gives ~1e-4 here, exact
    # ~2e-6 (float32, CPU).
    ref.assert_close(got, want, atol=1e-5, what=f"tap {name}")
  # 2 per attention block down, 1 mid, 3 per attention block up.
  assert {k: len(v) for k, v in out.cross_attention.items()} == {
      "down": 6, "mid": 1, "up": 9}
  for group in ("down", "mid", "up"):
    assert len(maps[group]) == len(out.cross_attention[group])
    for i, (got, want) in enumerate(zip(out.cross_attention[group],
                                        maps[group])):
      assert got.dtype == jnp.float32
      ref.assert_close(got, want, what=f"{group} attn2 map {i}")
      np.testing.assert_allclose(np.sum(got, -1), 1.0, atol=1e-5)


def test_unet_timestep_matters_and_scalar_broadcasts():
  """Each sample uses its own timestep: the per-sample outputs differ from
  those of a run with the other sample's timestep (guards the embedding)."""
  variables = _unet_variables()
  x = ref.inputs()
  model = sd.UNet(sd.UNetConfig.tiny())
  apply = jax.jit(lambda v, t: model.apply(v, x["latents"], t,
                                           x["context"]).taps[0])
  scalar = apply(variables, jnp.float32(ref.TIMESTEPS[1]))
  both = ref.flax_apply("unet")(variables).taps[0]
  np.testing.assert_allclose(scalar[1], both[1], atol=1e-5)
  assert np.max(np.abs(scalar[0] - both[0])) > 1e-3


def test_clip_text_encoder_matches_transformers():
  variables = conv.convert_clip_text(ref.state_dict(ref.torch_clip()),
                                     sd.CLIPTextConfig.tiny())
  states = ref.flax_apply("clip")(variables)
  ref.assert_close(states, ref.torch_clip_states(), what="last_hidden_state")


def test_bfloat16_close_to_float32():
  variables = conv.convert_clip_text(ref.state_dict(ref.torch_clip()),
                                     sd.CLIPTextConfig.tiny())
  states = ref.flax_apply("clip", jnp.bfloat16)(variables)
  assert states.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(states, np.float32),
                             ref.torch_clip_states(), atol=0.1)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="multiples of 8"):
    sd.VAEEncoder(sd.VAEConfig.tiny()).init(jax.random.key(0),
                                            jnp.zeros((1, 12, 16, 3)))
  with pytest.raises(ValueError, match="context"):
    sd.UNet(sd.UNetConfig.tiny()).init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 4)), 0, jnp.zeros((1, 77, 7)))
  with pytest.raises(ValueError, match="input_ids"):
    sd.CLIPTextEncoder(sd.CLIPTextConfig.tiny()).init(
        jax.random.key(0), jnp.zeros((1, 78), jnp.int32))
  with pytest.raises(ValueError, match="taps"):
    sd.UNetConfig(taps=(12,))


def test_unet_stops_at_last_tap():
  """No parameters after the last tap; an earlier last tap drops the rest."""
  shapes = conv.abstract_variables(sd.UNet(sd.UNetConfig.tiny()))["params"]
  assert "conv_norm_out" not in shapes and "conv_out" not in shapes
  short = sd.UNetConfig(**{**sd.UNetConfig.tiny().__dict__, "taps": (1, 4)})
  params = conv.abstract_variables(sd.UNet(short))["params"]
  assert sorted(k for k in params if k.startswith("up_blocks")) == [
      "up_blocks_0", "up_blocks_1"]
  assert sorted(params["up_blocks_1"]) == ["attentions_0", "attentions_1",
                                           "resnets_0", "resnets_1"]


def test_query_blocks_equal_one_block():
  """The CPU path (queries in blocks) and the one-block path agree, and the
  maps are the softmax of the scaled scores averaged over heads."""
  from counting_jax.models.stable_diffusion import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  q, k, v = (jnp.asarray(3 * rng.normal(size=(2, 512, 16)), jnp.float32)
             for _ in range(3))
  one = layers.attention(q, k, v, 4)
  blocks = jax.jit(lambda q, k, v: layers.attention(q, k, v, 4,
                                                    query_chunk=128))(q, k, v)
  np.testing.assert_allclose(blocks, one, atol=1e-5)
  out, probs = layers.attention(q, k[:, :7], v[:, :7], 4, return_probs=True)
  qh = np.asarray(q).reshape(2, 512, 4, 4)
  kh = np.asarray(k[:, :7]).reshape(2, 7, 4, 4)
  s = np.einsum("bnhd,bmhd->bhnm", qh, kh) / 2.0
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(probs, p.mean(1), atol=1e-6)
  vh = np.asarray(v[:, :7]).reshape(2, 7, 4, 4)
  np.testing.assert_allclose(
      out, np.einsum("bhnm,bmhd->bnhd", p, vh).reshape(2, 512, 16), atol=1e-5)
