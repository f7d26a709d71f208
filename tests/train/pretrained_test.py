"""Starting from converted weights: whole model or backbone, shape checks."""

import jax
import numpy as np
import optax
import pytest

from counting_jax import models
from counting_jax.convert import orbax_io
from counting_jax.train import pretrained, state as state_lib


@pytest.fixture(scope="module")
def state():
  model = models.get_model("bl_vgg19_tiny")
  return state_lib.create_train_state(model, optax.adam(1e-3),
                                      jax.random.PRNGKey(0), (1, 32, 32, 3))


def _ones_like(tree):
  return jax.tree.map(lambda x: np.full(x.shape, 0.5, np.float32), tree)


def test_whole_model_checkpoint_replaces_everything(state, tmp_path):
  path = orbax_io.save_variables({"params": _ones_like(state.params)},
                                 tmp_path / "m")
  new, where = pretrained.load_pretrained(state, path)
  assert where == "model"
  assert all(np.all(np.asarray(x) == 0.5) for x in jax.tree.leaves(new.params))


def test_backbone_checkpoint_replaces_only_the_backbone(state):
  backbone = {"params": _ones_like(state.params["backbone"])}
  merged, where = pretrained.merge_pretrained({"params": state.params},
                                              backbone)
  assert where == "backbone"
  assert all(np.all(x == 0.5) for x in jax.tree.leaves(merged["params"]["backbone"]))
  np.testing.assert_array_equal(merged["params"]["head_out"]["kernel"],
                                state.params["head_out"]["kernel"])


def test_mismatched_shapes_and_foreign_keys_are_refused(state):
  bad = jax.tree.map(lambda x: np.zeros(x.shape + (1,), np.float32),
                     state.params)
  with pytest.raises(ValueError, match="shapes differ"):
    pretrained.merge_pretrained({"params": state.params}, {"params": bad})
  with pytest.raises(ValueError, match="matches neither"):
    pretrained.merge_pretrained({"params": state.params},
                                {"params": {"fc": {"kernel": np.zeros(3)}}})
