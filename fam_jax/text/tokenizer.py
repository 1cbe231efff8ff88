"""The tokenizer interface, the byte tokenizer, and incremental decoding.

`ByteTokenizer` uses the ids of `seqio.ByteVocabulary` (0 pad, 1 eos, 2 unk,
byte b -> b + 3), so models trained on the byte-level seqio tasks generate with
it, without seqio installed. `bpe.BpeTokenizer` is the byte-level BPE of GGUF
models (SmolLM2).

A checkpoint directory keeps its tokenizer in the files named here:
`tokenizer.json` and `tokenizer_config.json` for a BPE tokenizer (`tokenizers`'
own file and the rest, `BpeTokenizer.save`), nothing for bytes. Checkpoints of
earlier fam-jax versions hold a spec in `tokenizer.json` instead:
`{"kind": "byte"}`, or `{"kind": "bpe", "file": "bpe_tokenizer.json"}` with
the vocabulary, merges and chat template in that second file.
`loading.load_tokenizer` reads all of them.
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
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
LEGACY_BPE_FILE = "bpe_tokenizer.json"


def save_tokenizer_spec(directory: str, spec: dict) -> None:
  """Writes a spec of the earlier layout (`{"kind": "byte"}`...) into a
  checkpoint directory."""
  with open(os.path.join(directory, TOKENIZER_FILE), "w") as f:
    json.dump(spec, f, indent=2)
