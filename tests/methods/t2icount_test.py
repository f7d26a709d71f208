"""T2ICount through the shared train step on real FSC-147 crops (tiny
random-weight SD / CLIP / decoder of the real structure, the real CLIP
tokenizer): targets from the data hook, frozen VAE / CLIP groups, finite
decreasing-capable updates, and a density that depends on the prompt."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax import methods
from counting_jax.configs import fsc147_t2icount
from counting_jax.data import pipeline
from counting_jax.text import encode
from counting_jax.train import optim, run_folder
from counting_jax.train import state as state_lib, step as step_lib


def random_params(abstract, seed: int = 0):
  """Cheap random parameters (compiling ``model.init`` of the UNet takes
  ~25 s on 2 cores): kernels U(-1, 1) / sqrt(fan_in), norm scales near 1,
  biases and embeddings small."""
  g = np.random.default_rng(seed)

  def fill(path, a):
    name = getattr(path[-1], "key", "")
    u = g.uniform(-1.0, 1.0, size=a.shape)
    if name == "kernel":
      w = u / np.sqrt(np.prod(a.shape[:-1]))
    elif name == "scale":
      w = 1.0 + 0.1 * u
    elif name == "embedding":
      w = 0.02 * u
    else:
      w = 0.1 * u
    return w.astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, fsc147_release):
  from counting_jax import data  # pylint: disable=g-import-not-at-top
  manual, _ = fsc147_release
  source = data.load("fsc147", "test",
                     data_dir=tmp_path_factory.mktemp("tfds"),
                     manual_dir=manual)
  config = fsc147_t2icount.get_config("smoke=True")
  method = methods.build(config)
  batch = method.dummy_batch(64, 64)
  abstract = jax.eval_shape(
      lambda: method.model.init(jax.random.key(0), batch["image"],
                                batch["tokens"]))
  return source, config, method, random_params(abstract["params"])


def test_method_contract(setup):
  _, config, method, params = setup
  assert method.name == "t2icount" and method.stride == 8
  assert method.inputs == ("image", "tokens")
  labels = method.param_labels(params)
  assert set(jax.tree.leaves(labels)) == {"vae", "clip", "unet", "decoder"}
  groups = dict(config.optim.groups)
  assert groups["vae"]["frozen"] and groups["clip"]["frozen"]
  assert groups["unet"]["lr"] == 5e-6 and groups["decoder"]["lr"] == 5e-5
  assert groups["unet"]["weight_decay"] == 5e-6  # 0.1x the decoder's
  assert groups["decoder"]["weight_decay"] == 5e-5
  assert config.input.batch_size == 2  # smoke; the full recipe uses 16
  assert fsc147_t2icount.get_config().input.batch_size == 16
  np.testing.assert_array_equal(method.fields.tokenize("apples"),
                                encode("apples"))


def test_train_steps_on_real_crops(setup):
  source, config, method, params = setup
  ds = pipeline.train_dataset(
      source, batch_size=2, max_points=600, seed=0, crop_size=(64, 64),
      scale_range=(0.25, 0.3), pad_multiple=64, mean=config.input.mean,
      std=config.input.std, cache=True, fields=method.fields)
  tx = optim.make_optimizer(
      "adamw", lr=1e-3, total_steps=3, weight_decay=5e-5,
      groups={k: dict(v) for k, v in config.optim.groups.items()},
      param_labels=method.param_labels)
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               batch_stats={}, opt_state=tx.init(params),
                               rng=jax.random.key_data(jax.random.key(0)))
  step = jax.jit(step_lib.make_train_step(method, tx))
  first = ds[0]
  assert first["gt_density"].shape == first["region"].shape == (2, 8, 8)
  assert first["tokens"].shape == (2, 77)
  # x60 block-summed density: about 60 per point inside the crop.
  np.testing.assert_allclose(first["gt_density"].sum((1, 2)) / 60,
                             first["count"], atol=0.35 * first["count"].max()
                             + 0.5)
  for i in range(3):
    batch = {k: v for k, v in ds[i].items()
             if np.asarray(v).dtype.kind in "biuf"}  # no text fields
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"])), metrics
  for group in ("vae", "clip"):
    for a, b in zip(jax.tree.leaves(params[group]),
                    jax.tree.leaves(state.params[group])):
      np.testing.assert_array_equal(a, b)
  for group in ("unet", "decoder"):
    moved = max(float(np.abs(np.asarray(a) - b).max()) for a, b in zip(
        jax.tree.leaves(params[group]), jax.tree.leaves(state.params[group])))
    assert moved > 0, group


def test_two_prompts_give_different_maps(setup):
  source, config, method, params = setup
  sample = source[0]
  image = pipeline.normalize(sample["image"][:128, :128], config.input.mean,
                             config.input.std)[None]
  apply = jax.jit(lambda p, b: method.apply({"params": p}, b, train=False))
  outs = [apply(params, {"image": image, "tokens": encode(t)[None]})
          for t in (sample["class_name"], "cars")]
  a, b = (np.asarray(method.density(o)) for o in outs)
  assert a.shape == (1, 16, 16) and np.isfinite(a).all()
  assert np.abs(a - b).max() > 1e-3 * max(np.abs(a).max(), 1e-6)
  assert not np.allclose(outs[0]["sim_x1"], outs[1]["sim_x1"])


def test_eval_protocol_configs():
  protocols = {
      "fsc147": ("fsc147", "val", ""),
      "fsc147_test": ("fsc147", "test", ""),
      "fsc147_s": ("fsc147_s", "test", ""),
      "fsc147_s_v1": ("fsc147_s", "v1", ""),
      "carpk": ("carpk", "test", "cars"),
  }
  for arg, want in protocols.items():
    c = fsc147_t2icount.get_config(f"eval={arg}")
    assert (c.dataset.name, c.dataset.test_split, c.dataset.prompt) == want
    assert c.eval_tiling.mode == "t2icount" and c.method.mosaic_prob == 0.25
    # A run trained with the default config accepts it in ``eval``.
    assert not run_folder.differences(
        fsc147_t2icount.get_config(), c,
        ignore=run_folder.RUNTIME_FIELDS["eval"])
  assert fsc147_t2icount.get_config("eval=carpk").published[0][1] == (
      "8.61 / 13.47")
  with pytest.raises(ValueError, match="eval='pucpr'"):
    fsc147_t2icount.get_config("eval=pucpr")


def test_eval_uses_the_dataset_prompt(monkeypatch):
  """``dataset.prompt`` (CARPK: "cars") replaces every class name in eval,
  as ``--text`` does; ``--text`` wins."""
  from counting_jax.train import loop  # pylint: disable=g-import-not-at-top
  seen = []

  class Stop(Exception):
    pass

  def record(source, text=None, exemplars=None):
    seen.append(text)
    raise Stop

  monkeypatch.setattr(loop, "_load", lambda config, split: [])
  monkeypatch.setattr(loop, "_WithUserInputs", record)
  c = fsc147_t2icount.get_config("eval=carpk")
  for kwargs in ({}, {"text": "red cars"}):
    with pytest.raises(Stop):
      loop.evaluate(c, "unused", **kwargs)
  assert seen == ["cars", "red cars"]


def test_evaluate_fsc147_s_from_config(setup, tmp_path, shared_data):
  """``eval`` on FSC-147-S from its config: the subset's prompts and GT
  counts, official tiling, a tiny random model."""
  import json  # pylint: disable=g-import-not-at-top
  from counting_jax.train import loop  # pylint: disable=g-import-not-at-top
  _, _, method, params = setup
  manual = tmp_path / "FSC147"
  manual.mkdir()
  (manual / "images_384_VarV2").symlink_to(
      shared_data("fsc147") / "images_384_VarV2")
  (manual / "FSC-147-S.json").write_text(json.dumps(
      {"7.jpg": {"class": "people", "count": 1},
       "2287.jpg": {"class": "leaves", "count": 3}}))
  c = fsc147_t2icount.get_config("smoke=True,eval=fsc147_s")
  c.dataset.test_split = "test"
  c.dataset.manual_dir, c.dataset.data_dir = str(manual), str(tmp_path / "d")
  c.eval_tiling.tile_size = c.eval_tiling.max_size = 128
  c.quiet = True
  state = state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                               batch_stats={}, opt_state=(),
                               rng=jax.random.key_data(jax.random.key(0)))
  result = loop.evaluate(c, tmp_path / "run", state=state, method=method)
  counts = json.loads((tmp_path / "run" / "counts.json").read_text())
  assert result["n"] == 2 and "loc_f1" not in result
  assert {k: v["true"] for k, v in counts.items()} == {"7": 1.0, "2287": 3.0}
  assert all(np.isfinite(v["pred"]) for v in counts.values())
