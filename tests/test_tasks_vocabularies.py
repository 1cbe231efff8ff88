"""The gin-selected vocabulary: bytes by default, SentencePiece for real
runs."""

import os

import gin
import pytest
import seqio

from fam_jax.gin_utils import parse_gin
from fam_jax.tasks import registration
from fam_jax.tasks import vocabularies

# A 26-piece toy SentencePiece model that ships with seqio.
SPM = os.path.join(os.path.dirname(seqio.__file__), "test_data",
                   "sentencepiece", "sentencepiece.model")


@pytest.fixture
def sentencepiece_by_gin():
  def parse():
    gin.parse_config(f"""
        get_vocabulary.kind = "sentencepiece"
        get_vocabulary.sentencepiece_model_file = "{SPM}"
    """)
    return seqio.SentencePieceVocabulary(SPM)
  yield parse
  gin.clear_config()


def test_default_is_the_byte_vocabulary():
  vocab = vocabularies.get_vocabulary()
  assert isinstance(vocab, seqio.ByteVocabulary)
  assert vocabularies.CONFIGURED_VOCABULARY.vocab_size == 259
  assert vocabularies.CONFIGURED_VOCABULARY.encode("hi") == [107, 108]


def test_registered_tasks_follow_gin_set_after_registration(
    sentencepiece_by_gin):
  # The task is registered before the gin config is parsed, as a gin file's
  # `import fam_jax.tasks` does.
  gin.clear_config()
  name = "test_vocab_follows_gin"
  registration.register_long_context_task(
      name, lambda split: iter([{"q": "the quick fox", "a": "a dog"}]),
      inputs="q", targets="a", metric="accuracy", splits=["test"])
  spm = sentencepiece_by_gin()
  try:
    ex = next(seqio.get_mixture_or_task(name).get_dataset(
        {"inputs": 64, "targets": 64}, "test", shuffle=False)
              .as_numpy_iterator())
  finally:
    seqio.TaskRegistry.remove(name)
  assert ex["inputs"].tolist() == list(spm.encode("the quick fox"))
  assert ex["targets"].tolist() == list(spm.encode("a dog")) + [spm.eos_id]
  assert ex["inputs"].tolist() != seqio.ByteVocabulary().encode("the quick fox")


def test_bad_vocabulary_settings_are_named():
  with pytest.raises(ValueError, match="kind='wordpiece'"):
    vocabularies.get_vocabulary(kind="wordpiece")
  with pytest.raises(ValueError, match="sentencepiece_model_file"):
    vocabularies.get_vocabulary(kind="sentencepiece")


def test_the_sentencepiece_gin_file_selects_the_model():
  parse_gin(["tasks/sentencepiece.gin"], [f"SENTENCEPIECE_MODEL = '{SPM}'"])
  try:
    vocab = vocabularies.CONFIGURED_VOCABULARY.vocabulary
    assert isinstance(vocab, seqio.SentencePieceVocabulary)
    assert vocab.sentencepiece_model_file == SPM
  finally:
    gin.clear_config()
  assert isinstance(vocabularies.CONFIGURED_VOCABULARY.vocabulary,
                    seqio.ByteVocabulary)


@pytest.mark.smollm2
def test_smollm2_gin_file_tokenizes_tasks_with_the_gguf_bpe():
  """PassKey read end to end in SmolLM2's own token ids (offline, from GGUF)."""
  from fam_jax.convert import gguf
  try:
    gguf.packaged_gguf("smollm2")
  except FileNotFoundError as e:
    pytest.skip(str(e))
  parse_gin(["tasks/smollm2.gin"])
  try:
    vocab = vocabularies.CONFIGURED_VOCABULARY.vocabulary
    assert isinstance(vocab, vocabularies.GgufVocabulary)
    assert vocab.vocab_size == 49152 and vocab.eos_id == 2
    ex = next(seqio.get_mixture_or_task("fam_passkey_1k").get_dataset(
        {"inputs": 1400, "targets": 16}, "validation", shuffle=False)
              .as_numpy_iterator())
  finally:
    gin.clear_config()
  tokenizer = vocab.tokenizer
  prompt = ex["inputs_pretokenized"].decode()
  answer = ex["targets_pretokenized"].decode()
  assert ex["inputs"].tolist() == tokenizer.encode(prompt, allow_special=False)
  assert ex["targets"].tolist() == tokenizer.encode(answer) + [tokenizer.eos_id]
  filler = prompt.split("\n")[2]
  assert 1024 - 32 <= len(tokenizer.encode(filler)) <= 1024
  assert f"The pass key is{answer}." in prompt
  assert vocab.decode(ex["inputs"].tolist()) == prompt
  # A document containing a control token's text keeps the characters.
  assert vocab.encode("<|im_end|>") != [tokenizer.eos_id]
