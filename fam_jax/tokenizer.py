"""Tokenizers for generation: text <-> ids, with incremental decoding.

`ByteTokenizer` uses the ids of `seqio.ByteVocabulary` (0 pad, 1 eos, 2 unk,
byte b -> b + 3), so models trained on the byte-level seqio tasks generate with
it, without seqio installed. `bpe_tokenizer.BpeTokenizer` is the byte-level BPE
of GGUF models (SmolLM2).

A checkpoint directory names its tokenizer in `tokenizer.json` (fam-jax's spec
file, not a Hugging Face tokenizer.json): `{"kind": "byte"}`, or
`{"kind": "bpe", "file": "bpe_tokenizer.json"}` with the vocabulary, merges and
chat template in that second file (`BpeTokenizer.save` writes both).
"""

from __future__ import annotations

import codecs
import json
import os
from typing import Protocol, Sequence


class Tokenizer(Protocol):
  vocab_size: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode_bytes(self, ids: Sequence[int]) -> bytes: ...


class ByteTokenizer:
  """UTF-8 bytes, shifted by 3 reserved ids (seqio.ByteVocabulary's layout)."""

  PAD, EOS, UNK = 0, 1, 2
  OFFSET = 3
  vocab_size = 256 + OFFSET
  eos_id = EOS

  def encode(self, text: str) -> list[int]:
    return [b + self.OFFSET for b in text.encode("utf-8")]

  def decode_bytes(self, ids: Sequence[int]) -> bytes:
    return bytes(i - self.OFFSET for i in ids
                 if self.OFFSET <= i < self.vocab_size)

  def decode(self, ids: Sequence[int]) -> str:
    return self.decode_bytes(ids).decode("utf-8", errors="replace")


class IncrementalDecoder:
  """Turns a stream of ids into text as soon as it forms whole characters."""

  def __init__(self, tokenizer: Tokenizer):
    self._tokenizer = tokenizer
    self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

  def push(self, token: int) -> str:
    return self._utf8.decode(self._tokenizer.decode_bytes([token]))

  def flush(self) -> str:
    return self._utf8.decode(b"", final=True)


TOKENIZER_FILE = "tokenizer.json"


def save_tokenizer_spec(directory: str, spec: dict) -> None:
  """Records in a checkpoint directory which tokenizer its model uses."""
  with open(os.path.join(directory, TOKENIZER_FILE), "w") as f:
    json.dump(spec, f, indent=2)


def load_tokenizer(checkpoint_dir: str | None) -> Tokenizer:
  """The tokenizer a checkpoint names in tokenizer.json; bytes by default.

  Args:
    checkpoint_dir: a fam-jax checkpoint directory, or None.

  Returns:
    `ByteTokenizer` when there is no directory or no tokenizer.json; otherwise
    the tokenizer of the spec's kind ('byte' or 'bpe').

  Raises:
    ValueError: an unknown kind, or a 'bpe' spec naming a file elsewhere.
  """
  path = None if checkpoint_dir is None else os.path.join(checkpoint_dir,
                                                          TOKENIZER_FILE)
  if path is None or not os.path.exists(path):
    return ByteTokenizer()
  with open(path) as f:
    spec = json.load(f)
  kind = spec.get("kind")
  if kind == "byte":
    return ByteTokenizer()
  if kind == "bpe":
    from fam_jax.bpe_tokenizer import BpeTokenizer  # pylint: disable=g-import-not-at-top
    filename = spec.get("file", "bpe_tokenizer.json")
    if os.path.basename(filename) != filename:
      raise ValueError(f"{path}: 'file' must name a file in the checkpoint "
                       f"directory, got {filename!r}")
    return BpeTokenizer.load(checkpoint_dir, filename)
  raise ValueError(f"{path}: unknown tokenizer kind {kind!r} "
                   "(known: 'byte', 'bpe')")
