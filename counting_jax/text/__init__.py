"""Text inputs of text-guided counters: CLIP's BPE tokenizer (offline)."""

from __future__ import annotations

from counting_jax.text.clip_tokenizer import (BOS_ID, CONTEXT_LENGTH, EOS_ID,
                                              CLIPTokenizer, encode,
                                              get_tokenizer, prompt_mask)

__all__ = ["CLIPTokenizer", "BOS_ID", "EOS_ID", "CONTEXT_LENGTH",
           "get_tokenizer", "encode", "prompt_mask"]
