"""CLIP tokenizer: official T2ICount token ids of the 148 class names, and
agreement with transformers' CLIPTokenizer built on the same vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from counting_jax.text import clip_tokenizer as ct


@pytest.fixture(scope="module")
def tokens(official_values):
  z = official_values("t2icount")
  return {k[len("tokens/"):]: z[k] for k in z.files if k.startswith("tokens/")}


def test_vocabulary_layout():
  tok = ct.get_tokenizer()
  assert len(tok.vocab) == 49408
  assert tok.vocab["<|startoftext|>"] == ct.BOS_ID
  assert tok.vocab["<|endoftext|>"] == ct.EOS_ID
  assert tok.vocab["!"] == 0 and tok.vocab["a</w>"] == 320


def test_official_ids_and_prompt_masks_of_all_148_names(tokens):
  names = [str(n) for n in tokens["class_names"]]
  assert len(names) == 148 and "cars" in names
  ids = np.stack([ct.encode(n) for n in names])
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, tokens["input_ids"])
  mask = ct.prompt_mask(ids)
  np.testing.assert_array_equal(mask, tokens["prompt_attn_mask"])
  np.testing.assert_array_equal(mask.sum(1), tokens["n_class_tokens"])
  lengths = [len(ct.get_tokenizer().tokenize(n)) for n in names]
  np.testing.assert_array_equal(lengths, tokens["n_class_tokens"])


def test_truncation_and_padding():
  long = " ".join(["apples"] * 100)
  ids = ct.encode(long)
  assert ids.shape == (77,) and ids[0] == ct.BOS_ID and ids[-1] == ct.EOS_ID
  assert ct.prompt_mask(ids).sum() == 75
  empty = ct.encode("")
  np.testing.assert_array_equal(empty, [ct.BOS_ID] + [ct.EOS_ID] * 76)
  assert ct.prompt_mask(empty).sum() == 0
  with pytest.raises(ValueError, match="context_length"):
    ct.encode("x", context_length=1)


def test_matches_transformers_on_harder_text(tmp_path):
  transformers = pytest.importorskip("transformers")
  tok = ct.get_tokenizer()
  (tmp_path / "vocab.json").write_text(json.dumps(tok.vocab))
  merges = ct._shipped_merges()
  (tmp_path / "merges.txt").write_text(
      "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
  hf = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"),
                                  str(tmp_path / "merges.txt"))
  for text in ["Hot-Air  Balloons", "crème brûlée", "naïve 42nd",
               "don't stop", "test!'s 12.5%", "🍎 apples??",
               "  sea\tshells "]:
    want = hf(text, truncation=True, max_length=77,
              padding="max_length")["input_ids"]
    np.testing.assert_array_equal(ct.encode(text), want, err_msg=text)
