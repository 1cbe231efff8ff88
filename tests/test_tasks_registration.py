"""`register_long_context_task` from files, TFDS and generators; truncation
that keeps the question; clear errors for bad data."""

import json

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from fam_jax.tasks import metrics
from fam_jax.tasks.registration import register_long_context_task

VOCAB = seqio.ByteVocabulary()
QUESTION = "\n\nQuestion: what colour is the door?\nAnswer:"


@pytest.fixture
def register():
  names = []

  def add(name, source, **kwargs):
    names.append(name)
    return register_long_context_task(name, source, **kwargs)

  yield add
  for name in names:
    seqio.TaskRegistry.remove(name)


def rows_source(rows):
  return lambda split: iter(rows)


def read(task, lengths, split="test", n=None):
  ds = task.get_dataset(lengths, split, shuffle=False, try_in_mem_cache=False)
  return list((ds.take(n) if n else ds).as_numpy_iterator())


DOC = "".join(f"Sentence {i}. " for i in range(100))  # 1390 bytes.
ROWS = [{"document": DOC, "question": "what colour is the door?",
         "answer": "red"}]
TEMPLATE = "{document}\n\nQuestion: {question}\nAnswer:"


def test_generation_task_features(register):
  task = register("t_features", rows_source(ROWS), inputs=TEMPLATE,
                  targets="answer", metric="rouge_l", splits=["test"])
  (ex,) = read(task, {"inputs": 4096, "targets": 8})
  prompt = DOC + QUESTION
  assert VOCAB.decode(ex["inputs"].tolist()) == prompt
  assert ex["inputs"].dtype == np.int32 and len(ex["inputs"]) == len(prompt)
  assert ex["targets"].tolist() == VOCAB.encode("red") + [VOCAB.eos_id]
  assert ex["inputs_pretokenized"].decode() == prompt
  assert ex["targets_pretokenized"] == b"red"
  assert task.predict_metric_fns == [metrics.rouge_l]


@pytest.mark.parametrize("keep", ["start", "end"])
def test_truncating_the_document_keeps_the_question(register, keep):
  task = register(f"t_keep_{keep}", rows_source(ROWS), inputs=TEMPLATE,
                  targets="answer", metric="rouge_l", keep=keep,
                  truncate_field="document", max_length=300, splits=["test"])
  (ex,) = read(task, {"inputs": 4096, "targets": 8})
  text = VOCAB.decode(ex["inputs"].tolist())
  assert len(ex["inputs"]) == 300            # max_length binds, not 4096.
  assert text.endswith(QUESTION)              # The question survives whole.
  kept = 300 - len(QUESTION)
  assert text[:kept] == (DOC[:kept] if keep == "start" else DOC[-kept:])
  # The pretokenized text is the prompt before truncation.
  assert ex["inputs_pretokenized"].decode() == DOC + QUESTION
  # A sequence length smaller than max_length binds instead.
  (ex,) = read(task, {"inputs": 100, "targets": 8})
  assert len(ex["inputs"]) == 100
  assert VOCAB.decode(ex["inputs"].tolist()).endswith(QUESTION)


def test_without_a_field_the_prompt_keeps_its_end(register):
  task = register("t_whole", rows_source(ROWS), inputs=TEMPLATE,
                  targets="answer", metric="rouge_l", max_length=120,
                  splits=["test"])
  (ex,) = read(task, {"inputs": 4096, "targets": 8})
  assert VOCAB.decode(ex["inputs"].tolist()) == (DOC + QUESTION)[-120:]


def test_no_truncation_makes_a_long_prompt_an_error(register):
  task = register("t_strict", rows_source(ROWS), inputs=TEMPLATE,
                  targets="answer", metric="accuracy", keep=None,
                  splits=["test"])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="t_strict: an inputs prompt is longer than 500"):
    read(task, {"inputs": 500, "targets": 8})


def test_prompt_with_no_room_for_the_document_is_an_error(register):
  task = register("t_no_room", rows_source(ROWS), inputs=TEMPLATE,
                  targets="answer", metric="accuracy",
                  truncate_field="document", splits=["test"])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="t_no_room: the inputs prompt leaves no room for "
                     "document within 20 tokens"):
    read(task, {"inputs": 20, "targets": 8})


def test_empty_document_is_an_error_naming_the_field(register):
  rows = [dict(ROWS[0], document=" \n ")]
  task = register("t_empty", rows_source(rows), inputs=TEMPLATE,
                  targets="answer", metric="accuracy", splits=["test"])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="task t_empty: field document is empty"):
    read(task, {"inputs": 512, "targets": 8})


def test_missing_field_is_an_error_naming_the_field(register, tmp_path):
  path = tmp_path / "rows.jsonl"
  path.write_text(json.dumps({"document": "d", "answer": "a"}) + "\n")
  task = register("t_missing", {"test": str(path)}, inputs=TEMPLATE,
                  targets="answer", metric="accuracy")
  with pytest.raises(ValueError, match="rows.jsonl line 1: missing field "
                     "'question'"):
    read(task, {"inputs": 512, "targets": 8})
  task = register("t_missing_gen",
                  rows_source([{"document": "d", "answer": "a"}]),
                  inputs=TEMPLATE, targets="answer", metric="accuracy",
                  splits=["test"])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="missing field 'question'"):
    read(task, {"inputs": 512, "targets": 8})


def test_bad_arguments_are_named(register):
  with pytest.raises(ValueError, match="unknown metric 'bleu'"):
    register("t_bad_metric", rows_source(ROWS), inputs=TEMPLATE,
             targets="answer", metric="bleu", splits=["test"])
  with pytest.raises(ValueError, match="truncate_field 'answer' is not a "
                     "field of the inputs template"):
    register("t_bad_field", rows_source(ROWS), inputs=TEMPLATE,
             targets="answer", metric="accuracy", truncate_field="answer",
             splits=["test"])
  with pytest.raises(ValueError, match="needs explicit `splits`"):
    register("t_no_splits", rows_source(ROWS), inputs=TEMPLATE,
             targets="answer", metric="accuracy")


def test_file_source_under_a_local_directory(register, tmp_path, monkeypatch):
  rows = [{"text": "An article about a cat.", "summary": "Cat."},
          {"text": "An article about a dog.", "summary": "Dog."}]
  (tmp_path / "val.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  task = register("t_files", {"validation": "val.jsonl"}, local_dir="mydata",
                  inputs="Article: {text}\nSummary:", targets="summary",
                  metric="rouge_l")
  monkeypatch.setenv("FAM_MYDATA_DIR", str(tmp_path))
  examples = read(task, {"inputs": 64, "targets": 8}, "validation")
  assert [VOCAB.decode(e["inputs"].tolist()) for e in examples] == [
      "Article: An article about a cat.\nSummary:",
      "Article: An article about a dog.\nSummary:"]
  assert [e["targets_pretokenized"] for e in examples] == [b"Cat.", b"Dog."]


def test_tfds_source(register):
  rows = {"input": ["Who wins?\n\nThe story: the hare sleeps, the tortoise "
                    "wins."], "output": ["the tortoise"],
          "id": ["1"], "pid": ["1_0"]}
  task = register("t_tfds", "scrolls/qasper:1.0.0", inputs="{input}\nAnswer:",
                  targets="output", metric="rouge_l", keep="start",
                  truncate_field="input", splits=["validation"])
  with tfds.testing.mock_data(
      as_dataset_fn=lambda *a, **k: tf.data.Dataset.from_tensor_slices(rows)):
    (ex,) = read(task, {"inputs": 22, "targets": 16}, "validation")
  assert VOCAB.decode(ex["inputs"].tolist()) == "Who wins?\n\nThe\nAnswer:"
  assert VOCAB.decode(ex["targets"].tolist()) == "the tortoise"


def test_language_modelling_task(register):
  text = "lemma foo: True by simp\n" * 20
  task = register("t_lm", rows_source([{"text": text}]), targets="text",
                  metric="next_token_accuracy", keep="start", max_length=50,
                  splits=["test"])
  (ex,) = read(task, {"targets": 4096})
  assert set(ex) == {"targets"}
  assert ex["targets"].tolist() == VOCAB.encode(text)[:50]
  assert task.predict_with_aux_metric_fns == [
      metrics.next_token_accuracy_with_aux]
  # Targets for the metric are the example's token ids.
  assert task.postprocess_fn("ignored", example=ex, is_target=True) == \
      VOCAB.encode(text)[:50]
