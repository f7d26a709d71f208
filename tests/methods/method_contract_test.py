"""What the trainer promises every method: parameter groups, text tokens and
masks in the batch, user inputs checked before any model is built, epoch
hooks, and a pipeline that reads the same batches with or without input
workers."""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from counting_jax import methods
from counting_jax.data import pipeline, transforms
from counting_jax.data.fields import BatchFields
from counting_jax.train import loop, optim, predict as predict_lib
from counting_jax.train import state as state_lib, step as step_lib


def byte_tokens(text: str, length: int = 8) -> np.ndarray:
  """UTF-8 bytes + 1, zero-padded to ``length`` (a toy tokenizer)."""
  raw = np.frombuffer(text.encode("utf-8")[:length], np.uint8)
  out = np.zeros((length,), np.int32)
  out[:len(raw)] = raw.astype(np.int32) + 1
  return out


class TextGated(nn.Module):
  """density = softplus(conv(image)) * sigmoid(embedding of the text)."""
  stride: int = 1

  @nn.compact
  def __call__(self, image, tokens, *, train=False):
    del train
    x = nn.Conv(1, (3, 3), name="vision")(image)[..., 0]
    text = nn.Embed(257, 1, name="text")(tokens).mean((1, 2))
    return jax.nn.softplus(x) * jax.nn.sigmoid(text)[:, None, None]


def _text_method():
  from counting_jax import losses  # pylint: disable=g-import-not-at-top
  base = methods.density.from_model(
      TextGated(), losses.get_loss("gaussian_l2", sigma=1.0))
  return dataclasses.replace(
      base, name="text_gated", inputs=("image", "tokens"),
      fields=BatchFields(tokenize=byte_tokens),
      param_labels=lambda params: {k: jax.tree.map(lambda _: k, v)
                                   for k, v in params.items()})


def _batch(g, texts):
  samples = [pipeline.add_fields(
      {"image": g.integers(0, 255, (8, 8, 3), np.uint8),
       "points": g.uniform(0, 8, (3, 2)).astype(np.float32),
       "boxes": np.zeros((0, 4), np.float32), "class_name": t,
       "image_id": str(i)}, _text_method().fields)
             for i, t in enumerate(texts)]
  items = [pipeline.pad_points(s, 4) for s in samples]
  batch = {k: np.stack([it[k] for it in items]) for k in items[0]
           if k != "image_id"}
  batch["image"] = pipeline.normalize(batch["image"], 0.5, 0.25)
  return batch


def test_text_tokens_reach_the_model_and_groups_freeze_or_scale():
  method = _text_method()
  batch = _batch(np.random.default_rng(0), ["apples", "a"])
  np.testing.assert_array_equal(batch["tokens"][1], [98, 0, 0, 0, 0, 0, 0, 0])
  groups = {"text": {"frozen": True}, "vision": {"lr": 0.0}}
  tx = optim.make_optimizer("adam", lr=1e-1, total_steps=5, clip_norm=1.0,
                            groups=groups, param_labels=method.param_labels)
  state = state_lib.create_train_state(
      method.model, tx, jax.random.PRNGKey(0),
      (batch["image"][:1], batch["tokens"][:1]))
  step = jax.jit(step_lib.make_train_step(method, tx))
  new, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  for group in ("text", "vision"):  # frozen, and lr 0: bit-identical
    for a, b in zip(jax.tree.leaves(state.params[group]),
                    jax.tree.leaves(new.params[group])):
      np.testing.assert_array_equal(a, b)
  # The same step with one default group moves both.
  tx = optim.make_optimizer("adam", lr=1e-1, total_steps=5)
  state = state_lib.create_train_state(
      method.model, tx, jax.random.PRNGKey(0),
      (batch["image"][:1], batch["tokens"][:1]))
  new, _ = jax.jit(step_lib.make_train_step(method, tx))(state, batch)
  for group in ("text", "vision"):
    assert not np.allclose(jax.tree.leaves(state.params[group])[0],
                           jax.tree.leaves(new.params[group])[0])
  # The text changes the density: the model reads the tokens.
  ev = step_lib.make_eval_step(method)
  other = dict(batch, tokens=np.stack([byte_tokens("zzz")] * 2))
  assert not np.allclose(ev(new, batch), ev(new, other))


def test_groups_without_labels_and_unknown_keys_raise():
  with pytest.raises(ValueError, match="param_labels"):
    optim.make_optimizer(lr=1.0, total_steps=1, groups={"a": {"lr": 1.0}})
  with pytest.raises(ValueError, match="optim.groups.a: unknown keys"):
    optim.make_optimizer(lr=1.0, total_steps=1, groups={"a": {"lr_": 1.0}},
                         param_labels=lambda p: p)


def test_user_inputs_are_checked_before_any_model(tmp_path):
  files = [tmp_path / "a.png", tmp_path / "b.png"]
  with pytest.raises(ValueError, match="--text"):
    predict_lib.check_user_inputs(_text_method(), files)
  predict_lib.check_user_inputs(_text_method(), files, text="apples")
  config = _exemplar_config()
  exemplar = methods.build(config)
  with pytest.raises(ValueError, match="--exemplars boxes.json"):
    predict_lib.check_user_inputs(exemplar, files)
  with pytest.raises(ValueError, match=r"no boxes for 1 image\(s\): \['b.png"):
    predict_lib.check_user_inputs(
        exemplar, files, exemplars={"a": np.ones((1, 4), np.float32)})
  with pytest.raises(KeyError, match="exemplars.*--exemplars"):
    exemplar.apply({}, {"image": np.zeros((1, 8, 8, 3))})


def test_read_exemplars_names_the_file_and_key(tmp_path):
  path = tmp_path / "boxes.json"
  path.write_text('{"IMG_1.jpg": [[1, 2, 3, 4], [5, 6, 7, 8]]}')
  boxes = predict_lib.read_exemplars(path)
  np.testing.assert_array_equal(boxes["IMG_1.jpg"][1], [5, 6, 7, 8])
  np.testing.assert_array_equal(predict_lib.boxes_for(boxes, "IMG_1"),
                                boxes["IMG_1.jpg"])
  assert predict_lib.boxes_for(boxes, "IMG_2.jpg").shape == (0, 4)
  path.write_text('{"IMG_1.jpg": [[3, 2, 1, 4]]}')
  with pytest.raises(ValueError, match=r"boxes.json \['IMG_1.jpg'\].*x1 < x2"):
    predict_lib.read_exemplars(path)
  path.write_text('[1, 2]')
  with pytest.raises(ValueError, match="boxes.json: expected"):
    predict_lib.read_exemplars(path)
  with pytest.raises(FileNotFoundError, match="nope.json"):
    predict_lib.read_exemplars(tmp_path / "nope.json")


def _exemplar_config():
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
  from configs import fsc147_exemplar  # pylint: disable=g-import-not-at-top
  return fsc147_exemplar.get_config("smoke=True")


def test_masks_and_exemplars_move_with_the_pixels():
  g = np.random.default_rng(1)
  mask = (g.random((12, 16, 1)) > 0.5).astype(np.float32)
  sample = {"image": np.repeat(mask * 255, 3, -1).astype(np.uint8),
            "points": np.zeros((0, 2), np.float32),
            "boxes": np.array([[1, 2, 5, 6]], np.float32), "masks": mask}
  for fn in (transforms.hflip, transforms.vflip,
             functools.partial(transforms.crop, top=2, left=3, height=8,
                               width=10),
             functools.partial(transforms.pad_to_size, height=16, width=24)):
    out = fn(sample)
    np.testing.assert_array_equal(out["masks"][..., 0] * 255,
                                  out["image"][..., 0])
  # x2 resize: nearest neighbour, each mask pixel becomes a 2x2 block.
  out = transforms.resize(sample, 24, 32)["masks"]
  np.testing.assert_array_equal(out, mask.repeat(2, 0).repeat(2, 1))
  fields = BatchFields(max_exemplars=3)
  out = pipeline.add_fields(transforms.hflip(sample), fields)
  np.testing.assert_array_equal(out["exemplars"][0], [11, 2, 15, 6])
  np.testing.assert_array_equal(out["exemplar_mask"], [True, False, False])


def test_epochs_done_counts_passes_over_the_stream():
  assert [loop.epochs_done(s, 4, 10) for s in range(7)] == [0, 0, 0, 1, 1,
                                                            2, 2]


def test_workers_read_the_same_batches_from_any_step():
  source = [{"image": np.full((8, 8, 3), i, np.uint8),
             "points": np.array([[i % 8, 1.0]], np.float32),
             "boxes": np.zeros((0, 4), np.float32), "class_name": "",
             "image_id": str(i)} for i in range(7)]
  ds = pipeline.train_dataset(source, batch_size=2, max_points=2, seed=3,
                              crop_size=(4, 4), cache=False)
  want = [ds[s * 2 + 1] for s in range(2, 6)]  # process 1 of 2, steps 2..5
  for workers in (0, 1):
    it = pipeline.iterate(ds, 2, process_index=1, process_count=2,
                          num_workers=workers)
    got = [next(it) for _ in range(4)]
    for a, b in zip(got, want):
      for key in ("image", "points", "point_mask"):
        np.testing.assert_array_equal(a[key], b[key])
