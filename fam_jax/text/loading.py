"""Which tokenizer a checkpoint directory holds (the layouts: `tokenizer.py`)."""

from __future__ import annotations

import os
from typing import Optional

from fam_jax.jsonfile import read_json
from fam_jax.text.tokenizer import (LEGACY_BPE_FILE, TOKENIZER_CONFIG_FILE,
                                    TOKENIZER_FILE, ByteTokenizer, Tokenizer)


def load_tokenizer(checkpoint_dir: Optional[str]) -> Tokenizer:
  """The tokenizer a checkpoint keeps; bytes by default.

  Args:
    checkpoint_dir: a fam-jax checkpoint directory, or None.

  Returns:
    `ByteTokenizer` when there is no directory or no tokenizer file; a
    `bpe.BpeTokenizer` for `tokenizers`' tokenizer.json with its
    tokenizer_config.json, or for a spec of the earlier layout naming one.

  Raises:
    ValueError: an unknown spec kind, or a 'bpe' spec naming a file elsewhere.
  """
  if checkpoint_dir is None:
    return ByteTokenizer()
  path = os.path.join(checkpoint_dir, TOKENIZER_FILE)
  if not os.path.exists(path):
    return ByteTokenizer()
  if os.path.exists(os.path.join(checkpoint_dir, TOKENIZER_CONFIG_FILE)):
    return _bpe().BpeTokenizer.load(checkpoint_dir)
  spec = read_json(path)
  kind = spec.get("kind") if isinstance(spec, dict) else None
  if kind == "byte":
    return ByteTokenizer()
  if kind == "bpe":
    filename = spec.get("file", LEGACY_BPE_FILE)
    if os.path.basename(filename) != filename:
      raise ValueError(f"{path}: 'file' must name a file in the checkpoint "
                       f"directory, got {filename!r}")
    return _bpe().BpeTokenizer.from_dict(
        read_json(os.path.join(checkpoint_dir, filename)))
  raise ValueError(f"{path}: unknown tokenizer kind {kind!r} "
                   "(known: 'byte', 'bpe')")


def _bpe():
  """The BPE module, imported when needed: it needs the optional `tokenizers`
  package (the gguf extra), which byte-level models do without."""
  from fam_jax.text import bpe  # pylint: disable=g-import-not-at-top
  return bpe
