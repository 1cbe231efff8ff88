"""Which vocabulary the tasks tokenize with, chosen by gin.

`get_vocabulary()` is the one gin-configurable choice: `seqio.ByteVocabulary` by
default (works offline, 259 ids), `seqio.SentencePieceVocabulary` for real runs
(the paper used a 256k SentencePiece vocabulary):

    get_vocabulary.kind = "sentencepiece"
    get_vocabulary.sentencepiece_model_file = "/path/to/spm.model"

(`gin_configs/tasks/sentencepiece.gin` does this given a model file.)

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
import seqio

KINDS = ("byte", "sentencepiece")


@functools.lru_cache(maxsize=None)
def _load(kind: str, sentencepiece_model_file: Optional[str],
          extra_ids: int) -> seqio.Vocabulary:
  if kind == "byte":
    return seqio.ByteVocabulary(extra_ids=extra_ids)
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
                   extra_ids: int = 0) -> seqio.Vocabulary:
  """The vocabulary every fam-jax task tokenizes with.

  Args:
    kind: `byte` (seqio.ByteVocabulary, the offline default) or `sentencepiece`.
    sentencepiece_model_file: path of the SentencePiece model; required by
      `sentencepiece`.
    extra_ids: sentinel ids appended to the vocabulary (seqio's `extra_ids`).

  Returns:
    The vocabulary (one instance per distinct setting).
  """
  if kind not in KINDS:
    raise ValueError(f"get_vocabulary.kind={kind!r}: expected one of {KINDS}")
  if kind == "sentencepiece" and not sentencepiece_model_file:
    raise ValueError("get_vocabulary.kind='sentencepiece' needs "
                     "get_vocabulary.sentencepiece_model_file")
  if kind == "byte":
    sentencepiece_model_file = None
  return _load(kind, sentencepiece_model_file, int(extra_ids))


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
