"""Which vocabulary the tasks tokenize with, chosen by gin.

`get_vocabulary()` is the one gin-configurable choice: `seqio.ByteVocabulary` by
default (works offline, 259 ids), `seqio.SentencePieceVocabulary` for real runs
(the paper used a 256k SentencePiece vocabulary), or the byte-level BPE stored in
a GGUF file (`GgufVocabulary`, e.g. SmolLM2's, offline):

    get_vocabulary.kind = "sentencepiece"
    get_vocabulary.sentencepiece_model_file = "/path/to/spm.model"

    get_vocabulary.kind = "gguf"
    get_vocabulary.gguf_file = "smollm2"   # or a path to a .gguf file

(`gin_configs/tasks/sentencepiece.gin` and `smollm2.gin` do this.)

Tasks are registered when `fam_jax.tasks` is imported, which in a gin-driven run
happens while the gin files are still being parsed, before the bindings above
are known. So the tasks do not hold a concrete vocabulary: they hold
`CONFIGURED_VOCABULARY`, which asks `get_vocabulary()` at each use and so always
follows the gin configuration in force.
"""

from __future__ import annotations

import functools
from typing import Optional

from absl import logging
import gin
import numpy as np
import seqio
import tensorflow as tf

KINDS = ("byte", "sentencepiece", "gguf")


class GgufVocabulary(seqio.Vocabulary):
  """The byte-level BPE tokenizer of a GGUF file (`fam_jax.text.bpe`).

  Ids are the model's own, so tasks feed a converted GGUF model directly. Text
  is encoded with `allow_special=False`: a document that happens to contain
  "<|im_end|>" gets the characters, not the control token. seqio pads with id
  0 (SmolLM2: `<|endoftext|>`); loss weights and segment ids ignore padding.
  """

  def __init__(self, gguf_file: str, extra_ids: int = 0):
    from fam_jax.convert import gguf  # pylint: disable=g-import-not-at-top
    source = gguf.GgufCheckpoint(gguf_file)
    self.gguf_file = source.path
    self.tokenizer = source.tokenizer()
    super().__init__(extra_ids=extra_ids)

  @property
  def eos_id(self) -> int:
    return self.tokenizer.eos_id

  @property
  def unk_id(self) -> Optional[int]:
    return self.tokenizer.unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def _encode(self, s: str) -> list[int]:
    return self.tokenizer.encode(s, allow_special=False)

  def _decode(self, ids) -> str:
    return self.tokenizer.decode([int(i) for i in ids])

  def _encode_tf(self, s):
    if s.shape.rank != 0:
      raise ValueError("GgufVocabulary.encode_tf takes one string (rank 0); "
                       f"got rank {s.shape.rank}")
    # An array, not a list: py_function reads a returned list as many outputs.
    ids = tf.py_function(
        lambda t: np.asarray(self._encode(t.numpy().decode("utf-8")), np.int32),
        [s], tf.int32)
    return tf.ensure_shape(ids, [None])

  def _decode_tf(self, ids):
    text = tf.py_function(lambda t: self._decode(t.numpy().tolist()), [ids],
                          tf.string)
    return tf.ensure_shape(text, [])

  def __eq__(self, other):
    return (isinstance(other, GgufVocabulary)
            and other.gguf_file == self.gguf_file
            and other.extra_ids == self.extra_ids)

  def __hash__(self):
    return hash((self.gguf_file, self.extra_ids))

  def __str__(self):
    return f"GgufVocabulary({self.gguf_file})"


@functools.lru_cache(maxsize=None)
def _load(kind: str, model_file: Optional[str],
          extra_ids: int) -> seqio.Vocabulary:
  if kind == "byte":
    return seqio.ByteVocabulary(extra_ids=extra_ids)
  if kind == "gguf":
    return GgufVocabulary(model_file, extra_ids=extra_ids)
  sentencepiece_model_file = model_file
  vocab = seqio.SentencePieceVocabulary(sentencepiece_model_file,
                                        extra_ids=extra_ids)
  if vocab.unk_id == vocab.pad_id:
    logging.warning(
        "SentencePiece model %s uses id %d for <unk>, which seqio also uses "
        "for padding: padding decodes as <unk> (loss weights still ignore it).",
        sentencepiece_model_file, vocab.pad_id)
  return vocab


@gin.configurable(module="fam_jax.tasks")
def get_vocabulary(kind: str = "byte",
                   sentencepiece_model_file: Optional[str] = None,
                   extra_ids: int = 0,
                   gguf_file: Optional[str] = None) -> seqio.Vocabulary:
  """The vocabulary every fam-jax task tokenizes with.

  Args:
    kind: `byte` (seqio.ByteVocabulary, the offline default), `sentencepiece`
      or `gguf`.
    sentencepiece_model_file: path of the SentencePiece model; required by
      `sentencepiece`.
    extra_ids: sentinel ids appended to the vocabulary (seqio's `extra_ids`).
    gguf_file: a .gguf file, or the name of a packaged one ('smollm2');
      required by `gguf`.

  Returns:
    The vocabulary (one instance per distinct setting).
  """
  if kind not in KINDS:
    raise ValueError(f"get_vocabulary.kind={kind!r}: expected one of {KINDS}")
  if kind == "sentencepiece" and not sentencepiece_model_file:
    raise ValueError("get_vocabulary.kind='sentencepiece' needs "
                     "get_vocabulary.sentencepiece_model_file")
  if kind == "gguf" and not gguf_file:
    raise ValueError("get_vocabulary.kind='gguf' needs get_vocabulary.gguf_file")
  model_file = {"byte": None, "sentencepiece": sentencepiece_model_file,
                "gguf": gguf_file}[kind]
  return _load(kind, model_file, int(extra_ids))


class ConfiguredVocabulary(seqio.Vocabulary):
  """Stands for whatever `get_vocabulary()` returns at the moment of use."""

  def __init__(self):
    super().__init__(extra_ids=0)

  @property
  def vocabulary(self) -> seqio.Vocabulary:
    return get_vocabulary()

  @property
  def bos_id(self):
    return self.vocabulary.bos_id

  @property
  def eos_id(self):
    return self.vocabulary.eos_id

  @property
  def unk_id(self):
    return self.vocabulary.unk_id

  @property
  def pad_id(self) -> int:
    return self.vocabulary.pad_id

  @property
  def extra_ids(self) -> int:
    return self.vocabulary.extra_ids

  @property
  def vocab_size(self) -> int:
    return self.vocabulary.vocab_size

  @property
  def _base_vocab_size(self) -> int:
    return self.vocabulary._base_vocab_size  # pylint: disable=protected-access

  # The public methods delegate whole, so the wrapped vocabulary's own handling
  # of EOS and extra ids applies.
  def encode(self, s):
    return self.vocabulary.encode(s)

  def decode(self, ids):
    return self.vocabulary.decode(ids)

  def encode_tf(self, s):
    return self.vocabulary.encode_tf(s)

  def decode_tf(self, ids):
    return self.vocabulary.decode_tf(ids)

  def _encode(self, s):
    return self.vocabulary.encode(s)

  def _decode(self, ids):
    return self.vocabulary.decode(ids)

  def _encode_tf(self, s):
    return self.vocabulary.encode_tf(s)

  def _decode_tf(self, ids):
    return self.vocabulary.decode_tf(ids)

  def __eq__(self, other):
    return (isinstance(other, ConfiguredVocabulary)
            or self.vocabulary == other)

  def __hash__(self):
    return hash(ConfiguredVocabulary)

  def __str__(self):
    return f"ConfiguredVocabulary({self.vocabulary})"


CONFIGURED_VOCABULARY = ConfiguredVocabulary()
