"""CLIP's byte-level BPE tokenizer, offline, from OpenAI's vocabulary file.

All OpenAI CLIP models (ViT-L/14 included, hence Stable Diffusion 1.x and
T2ICount) share one BPE: 256 byte symbols, the same with an end-of-word
marker ``</w>``, 48,894 merges and ``<|startoftext|>`` (id 49406) /
``<|endoftext|>`` (id 49407), 49,408 ids in all. The merges ship here as
``assets/bpe_simple_vocab_16e6.txt.gz`` (OpenAI's MIT-licensed file, as
distributed in the open_clip_torch 3.3.0 wheel; licence in
``assets/LICENSE_CLIP_BPE``), so no hub download is needed.

Encoding follows the HF ``CLIPTokenizer`` that T2ICount calls (OpenAI's
reference also unescapes HTML entities and repairs text with ftfy; the HF
tokenizer without ftfy, and this one, do neither): runs of whitespace
collapsed, lower case; the text is split into the contractions
``'s 't 're 've 'm 'll 'd``, runs of letters, single digits (Unicode
numbers), and runs of other non-space characters; each piece
is mapped byte-wise onto printable symbols, its last symbol gets ``</w>``,
and the pair of adjacent symbols with the lowest merge rank is merged until
no ranked pair is left.

:func:`encode` pads like the HF ``CLIPTokenizer`` of
``openai/clip-vit-large-patch14`` called with ``truncation=True,
max_length=77, padding="max_length"``: ``[BOS] + ids[:75] + [EOS]``, padded
with the EOS id. The T2ICount prompt mask (1 on the class-name tokens, 0 on
BOS, EOS and padding) is :func:`prompt_mask`.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import unicodedata

import numpy as np

__all__ = ["CLIPTokenizer", "BOS_ID", "EOS_ID", "CONTEXT_LENGTH",
           "get_tokenizer", "encode", "prompt_mask"]

BOS_ID = 49406
EOS_ID = 49407
CONTEXT_LENGTH = 77
_N_MERGES = 49152 - 256 - 2
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def _byte_symbols() -> tuple[list[str], dict[int, str]]:
  """The 256 printable stand-ins of the bytes: (vocabulary order, table).

  Printable Latin-1 bytes stand for themselves and come first (ascending);
  the other bytes map to code points 256, 257, ... in ascending byte order.
  """
  printable = (list(range(ord("!"), ord("~") + 1))
               + list(range(ord("\xa1"), ord("\xac") + 1))
               + list(range(ord("\xae"), ord("\xff") + 1)))
  others = [b for b in range(256) if b not in set(printable)]
  table = {b: chr(b) for b in printable}
  table.update({b: chr(256 + n) for n, b in enumerate(others)})
  return [table[b] for b in printable + others], table


def _category(ch: str) -> str:
  c = unicodedata.category(ch)[0]
  if ch.isspace():
    return "space"
  return {"L": "letter", "N": "number"}.get(c, "other")


def _pretokenize(text: str) -> list[str]:
  """Split cleaned, lower-case text into BPE words (see module docstring)."""
  out, i, n = [], 0, len(text)
  while i < n:
    ch = text[i]
    if ch == "'":
      hit = next((c for c in sorted(_CONTRACTIONS, key=len, reverse=True)
                  if text.startswith(c, i)), None)
      if hit is not None:
        out.append(hit)
        i += len(hit)
        continue
    kind = _category(ch)
    if kind == "space":
      i += 1
      continue
    if kind == "number":
      out.append(ch)
      i += 1
      continue
    j = i + 1
    while j < n and _category(text[j]) == kind:
      j += 1
    out.append(text[i:j])
    i = j
  return out


class CLIPTokenizer:
  """OpenAI CLIP BPE tokenizer (see module docstring).

  Args:
    merges: the merge pairs in rank order (default: the shipped file).

  Attributes:
    vocab: ``{symbol: id}`` with 49,408 entries.
  """

  def __init__(self, merges: list[tuple[str, str]] | None = None):
    if merges is None:
      merges = _shipped_merges()
    symbols, self._byte_table = _byte_symbols()
    words = symbols + [s + "</w>" for s in symbols]
    words += ["".join(m) for m in merges]
    words += ["<|startoftext|>", "<|endoftext|>"]
    self.vocab = {w: i for i, w in enumerate(words)}
    self._ranks = {m: i for i, m in enumerate(merges)}
    self._cache: dict[str, list[str]] = {}

  def _bpe(self, word: str) -> list[str]:
    if word in self._cache:
      return self._cache[word]
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
      pairs = [(self._ranks.get((a, b)), k)
               for k, (a, b) in enumerate(zip(parts[:-1], parts[1:]))]
      ranked = [p for p in pairs if p[0] is not None]
      if not ranked:
        break
      best = min(ranked)[0]
      merged, k = [], 0
      while k < len(parts):
        if (k + 1 < len(parts)
            and self._ranks.get((parts[k], parts[k + 1])) == best):
          merged.append(parts[k] + parts[k + 1])
          k += 2
        else:
          merged.append(parts[k])
          k += 1
      parts = merged
    self._cache[word] = parts
    return parts

  def tokenize(self, text: str) -> list[int]:
    """Token ids of ``text`` without BOS/EOS (any length)."""
    text = " ".join(text.split()).lower()
    ids = []
    for word in _pretokenize(text):
      mapped = "".join(self._byte_table[b] for b in word.encode("utf-8"))
      ids.extend(self.vocab[p] for p in self._bpe(mapped))
    return ids

  def encode(self, text: str,
             context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """int32 [context_length]: BOS, the first ``context_length - 2`` ids of
    :meth:`tokenize`, EOS, then EOS padding.

    Raises:
      ValueError: if ``context_length < 2``.
    """
    if context_length < 2:
      raise ValueError(f"context_length must be >= 2, got {context_length}")
    ids = [BOS_ID] + self.tokenize(text)[:context_length - 2] + [EOS_ID]
    ids += [EOS_ID] * (context_length - len(ids))
    return np.asarray(ids, np.int32)


def _shipped_merges() -> list[tuple[str, str]]:
  path = importlib.resources.files("counting_jax.text").joinpath(
      "assets/bpe_simple_vocab_16e6.txt.gz")
  with path.open("rb") as f:
    lines = gzip.decompress(f.read()).decode("utf-8").split("\n")
  # Line 0 is a version header; the vocabulary uses the first 48,894 merges.
  return [tuple(line.split()) for line in lines[1:1 + _N_MERGES]]


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> CLIPTokenizer:
  """The shared tokenizer built from the shipped merges (built once)."""
  return CLIPTokenizer()


def encode(text: str, context_length: int = CONTEXT_LENGTH) -> np.ndarray:
  """int32 [77] CLIP token ids of ``text`` (:meth:`CLIPTokenizer.encode`).

  A picklable module-level function: the ``BatchFields.tokenize`` of
  T2ICount (the prompt is the raw class name, no template).
  """
  return get_tokenizer().encode(text, context_length)


def prompt_mask(token_ids):
  """1.0 on the prompt's own tokens, 0.0 on BOS, EOS and padding.

  Args:
    token_ids: int [..., L] ids from :func:`encode` (numpy or jax).

  Returns:
    float32 [..., L]: T2ICount's prompt mask (positions 1..n of the n
    class-name tokens; the official dataset counts n without truncation,
    which only differs for prompts over 75 tokens).
  """
  ids = token_ids
  return ((ids != BOS_ID) & (ids != EOS_ID)).astype(np.float32)
