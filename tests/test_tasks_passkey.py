"""PassKey: the paper's prompt, the key where expected, filler lengths in
tokens within the requested range, deterministic by seed; every registered
PassKey task read end to end."""

import os
import re

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

import fam_jax.tasks  # noqa: F401  (registers the tasks)
from fam_jax.tasks import passkey
from fam_jax.tasks import vocabularies

VOCAB = seqio.ByteVocabulary()
SPM = os.path.join(os.path.dirname(seqio.__file__), "test_data",
                   "sentencepiece", "sentencepiece.model")
HEAD = ("There is an important info hidden inside a lot of irrelevant text. "
        "Find it and memorize them. I will quiz you about the important "
        "information there.\nThe pass key is {k}. Remember it. {k} is the "
        "pass key.\n")
TAIL = "\nWhat is the pass key? The pass key is"
TASK_START = passkey.TASK_DESCRIPTION[:8]
FILLER_CYCLE = ("The grass is green. The sky is blue. The sun is yellow. "
                "Here we go. There and back again.")


def check_prompt(prompt, vocab=VOCAB):
  """Checks the layout of a prompt; returns (key, filler tokens)."""
  key = int(re.match(r"There is .*?\nThe pass key is (\d+)\.", prompt,
                     re.S).group(1))
  head, tail = HEAD.format(k=key), TAIL
  assert prompt.startswith(head) and prompt.endswith(tail)
  filler = prompt[len(head):-len(tail)]
  # The filler is the five-sentence cycle repeated, cut after a sentence.
  repeats = (FILLER_CYCLE + " ") * (len(filler) // len(FILLER_CYCLE) + 1)
  assert repeats.startswith(filler + " ")
  assert 1 <= key <= 50000
  return key, len(vocab.encode(filler))


def read(name, split, lengths, n):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(lengths, split, shuffle=False, try_in_mem_cache=False)
  return list(ds.take(n).as_numpy_iterator())


@pytest.mark.parametrize("label,length", list(
    passkey.EVAL_FILLER_LENGTHS.items()))
def test_registered_eval_tasks(label, length):
  n = 1 if length > 20000 else 3
  examples = read(f"fam_passkey_{label}", "test",
                  {"inputs": length + 400, "targets": 16}, n)
  assert len(examples) == n
  for ex in examples:
    prompt = VOCAB.decode(ex["inputs"].tolist())
    assert prompt == ex["inputs_pretokenized"].decode()
    key, filler_tokens = check_prompt(prompt)
    assert length - passkey.EVAL_TOLERANCE <= filler_tokens <= length
    # The key sits where expected: in the key line, twice, as tokens.
    key_at = len(HEAD.format(k=key).split(str(key))[0])
    assert ex["inputs"][key_at:key_at + len(str(key))].tolist() == \
        VOCAB.encode(str(key))
    assert ex["targets"].tolist() == VOCAB.encode(f" {key}") + [VOCAB.eos_id]
    assert ex["targets_pretokenized"].decode() == f" {key}"
  task = seqio.get_mixture_or_task(f"fam_passkey_{label}")
  assert task.predict_metric_fns == [fam_jax.tasks.metrics.passkey_accuracy]
  assert set(task.splits) == {"validation", "test"}


def test_eval_prompts_are_never_cut():
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="fam_passkey_1k: an inputs prompt is longer"):
    read("fam_passkey_1k", "test", {"inputs": 1000, "targets": 16}, 1)


@pytest.mark.parametrize("name,filler,prompt_weight", [
    ("fam_passkey_train", (2048, 18432), 0.0),  # 2k-18k, the paper's.
    ("fam_passkey_train_short", (256, 1024), 0.0),
    ("fam_passkey_train_near", (0, 64), 0.1),
    ("fam_passkey_train_far", (64, 768), 0.1),
])
def test_training_task_rows(name, filler, prompt_weight):
  low, high = filler
  length = high + 400
  for ex in read(name, "train", {"targets": length}, 3):
    targets, weights = ex["targets"], ex["loss_weights"]
    assert targets.shape == weights.shape == (length,)
    used = int(np.sum(targets != 0))
    assert not targets[used:].any() and not weights[used:].any()
    assert targets[used - 1] == VOCAB.eos_id
    prompt = VOCAB.decode(targets[:used - 1].tolist())
    key, filler_tokens = check_prompt(prompt.rsplit(" ", 1)[0])
    assert prompt.endswith(f"{TAIL} {key}")
    assert low <= filler_tokens <= high
    # Weight 1 on the answer " {key}" and the EOS, prompt_weight before.
    answer = len(f" {key}") + 1
    np.testing.assert_allclose(weights[:used - answer], prompt_weight)
    np.testing.assert_array_equal(weights[used - answer:used], 1)
  short = max(low - 48, 16)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f"{name}: an example is longer than the "
                     f"row length {short}"):
    read(name, "train", {"targets": short}, 1)


def test_copy_drill_rows():
  """A random string, a newline, the same string; the first copy at 0.1."""
  seen = set()
  for ex in read("fam_passkey_copy_drill", "train", {"targets": 384}, 20):
    used = int(np.sum(ex["targets"] != 0))
    assert ex["targets"][used - 1] == VOCAB.eos_id
    text = VOCAB.decode(ex["targets"][:used - 1].tolist())
    first, second = text.split("\n")
    assert first == second and set(first) <= set(passkey.COPY_DRILL_ALPHABET)
    low, high = passkey.COPY_DRILL_CHARACTERS
    assert low <= len(first) <= high
    np.testing.assert_allclose(ex["loss_weights"][:len(first) + 1], 0.1)
    np.testing.assert_array_equal(ex["loss_weights"][len(first) + 1:used], 1)
    assert not ex["loss_weights"][used:].any()
    seen.add(first)
  assert len(seen) == 20
  again = [e["prompt"] for e in passkey.copy_drill("train", num_examples=3)]
  assert again == [e["prompt"] for e in passkey.copy_drill("train",
                                                           num_examples=3)]
  assert again != [e["prompt"] for e in passkey.copy_drill("validation",
                                                           num_examples=3)]


def test_copy_stage_mixes_drill_and_near_rows():
  rows = read("fam_passkey_train_copy", "train", {"targets": 384}, 40)
  drills = sum(VOCAB.decode(r["targets"][:8].tolist()) != TASK_START
               for r in rows)
  assert 8 <= drills <= 32  # half and half: 20 expected, sd ~3.2


def test_examples_are_deterministic_and_splits_differ():
  def keys(split, seed, n=20):
    return [e["key"] for e in passkey.examples(
        split, filler_tokens=(100, 400), seed=seed, num_examples=n,
        vocabulary=VOCAB)]

  assert keys("test", 0) == keys("test", 0)
  assert keys("test", 0)[:5] == keys("test", 0, n=5)
  assert keys("test", 0) != keys("test", 1)
  assert keys("test", 0) != keys("validation", 0)


def test_filler_lengths_cover_the_requested_range():
  lengths = []
  for ex in passkey.examples("test", filler_tokens=(100, 400), seed=3,
                             num_examples=200, vocabulary=VOCAB):
    key, tokens = check_prompt(ex["prompt"])
    assert str(key) == ex["key"] and ex["answer"] == f" {key}"
    assert tokens == int(ex["filler_tokens"])
    lengths.append(tokens)
  assert 100 <= min(lengths) < 140 and 360 < max(lengths) <= 400


def test_filler_tokens_are_counted_in_the_configured_vocabulary():
  spm = seqio.SentencePieceVocabulary(SPM)
  gin.parse_config(f"""
      get_vocabulary.kind = "sentencepiece"
      get_vocabulary.sentencepiece_model_file = "{SPM}"
  """)
  try:
    examples = list(passkey.examples("test", filler_tokens=(300, 360), seed=0,
                                     num_examples=5))
    assert vocabularies.CONFIGURED_VOCABULARY.vocab_size == spm.vocab_size
  finally:
    gin.clear_config()
  for ex in examples:
    _, tokens = check_prompt(ex["prompt"], spm)
    assert 300 <= tokens <= 360
    # The same filler is far longer in bytes: the count used the model.
    assert len(VOCAB.encode(ex["prompt"])) > 400


def test_make_filler_is_the_longest_that_fits():
  for budget in [0, 5, 19, 20, 100, 1234]:
    text, tokens = passkey.make_filler(budget, VOCAB)
    assert tokens == len(VOCAB.encode(text)) <= budget
    n = len(re.findall(r"\.", text))
    assert len(VOCAB.encode(passkey.filler_text(n + 1))) > budget


def test_a_range_narrower_than_a_sentence_is_refused():
  with pytest.raises(ValueError, match="must span at least"):
    next(passkey.examples("test", filler_tokens=(100, 105), seed=0,
                          num_examples=1, vocabulary=VOCAB))
  with pytest.raises(ValueError, match="min <= max"):
    passkey.register_passkey_task("never_registered", (10, 5))
