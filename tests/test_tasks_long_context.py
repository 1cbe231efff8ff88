"""The paper's long-context tasks (Table 10), read end to end: SCROLLS and
PG-19 through TFDS's mock (rows in the builders' schema), XL-Sum and Isabelle
from fixture files."""

import json
import pathlib

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import fam_jax.tasks  # noqa: F401  (registers the tasks)
from fam_jax.tasks import long_context
from fam_jax.tasks import metrics

VOCAB = seqio.ByteVocabulary()
FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "tasks"
ANSWER_CUE = "\n\nAnswer:"

# SCROLLS rows: the query comes first in `input`, then the document.
SCROLLS_ROWS = {
    "fam_narrativeqa": [
        ("Who keeps the lighthouse?\n\n" + "The keeper, Ann, lit the lamp "
         "every night. " * 40, "Ann"),
        ("Where does the story end?\n\nIt ends at the harbour.", "harbour")],
    "fam_scrolls_qasper": [
        ("Which dataset is used?\n\nWe train on PG-19 and evaluate on arXiv. "
         * 3, "PG-19")],
    "fam_scrolls_quality": [
        ("Why does Si retire?\n\n (A) He is tired\n (B) He is old\n (C) He "
         "is rich\n (D) He is bored\n\n\n\nSi had flown for forty years. " * 2,
         "He is old")],
}


def mock_rows(rows):
  """TFDS's mock serving `rows`; returns the builder name it was asked for."""
  asked = []

  def as_dataset(builder, *args, **kwargs):
    del args, kwargs
    asked.append(builder.name)
    return tf.data.Dataset.from_tensor_slices(
        {k: [r[k] for r in rows] for k in rows[0]})

  return tfds.testing.mock_data(as_dataset_fn=as_dataset), asked


def read(name, lengths, split):
  task = seqio.get_mixture_or_task(name)
  ds = task.get_dataset(lengths, split, shuffle=False, try_in_mem_cache=False)
  return list(ds.as_numpy_iterator())


@pytest.mark.parametrize("name", list(long_context.SCROLLS_TASKS))
def test_scrolls_tasks(name):
  tfds_name, metric = long_context.SCROLLS_TASKS[name]
  # The fields read are in the real builder's schema.
  features = tfds.builder(tfds_name).info.features
  assert {"input", "output"} <= set(features)
  rows = [{"id": str(i), "pid": f"{i}_0", "input": q, "output": a}
          for i, (q, a) in enumerate(SCROLLS_ROWS[name])]
  mock, asked = mock_rows(rows)
  with mock:
    examples = read(name, {"inputs": 256, "targets": 32}, "validation")
  assert asked and asked[0] == tfds_name.split("/")[0]
  assert len(examples) == len(rows)
  for ex, row in zip(examples, rows):
    full = row["input"] + ANSWER_CUE
    text = VOCAB.decode(ex["inputs"].tolist())
    if len(full) <= 256:
      assert text == full
    else:  # The document loses its end; the query and the cue survive.
      assert len(ex["inputs"]) == 256
      assert text == row["input"][:256 - len(ANSWER_CUE)] + ANSWER_CUE
      query = row["input"].split("\n\n\n\n")[0].split("\n\n")[0]
      assert text.startswith(query)
    assert ex["targets"].tolist() == VOCAB.encode(row["output"]) + [1]
    assert ex["targets_pretokenized"].decode() == row["output"]
  task = seqio.get_mixture_or_task(name)
  assert task.predict_metric_fns == [metrics.METRICS[metric]]
  assert set(task.splits) == {"train", "validation"}  # Test has no outputs.


def test_paper_limit_of_256k_tokens():
  document = "x" * 300_000
  rows = [{"id": "0", "pid": "0_0", "input": "Q?\n\n" + document,
           "output": "a"}]
  mock, _ = mock_rows(rows)
  with mock:
    (ex,) = read("fam_scrolls_qasper", {"inputs": 400_000, "targets": 8},
                 "validation")
  assert long_context.MAX_LENGTH == 262_144
  assert len(ex["inputs"]) == 262_144
  assert VOCAB.decode(ex["inputs"][:4].tolist()) == "Q?\n\n"


def test_scrolls_empty_output_is_an_error():
  rows = [{"id": "0", "pid": "0_0", "input": "Q?\n\nDoc.", "output": ""}]
  mock, _ = mock_rows(rows)
  with mock, pytest.raises(tf.errors.InvalidArgumentError,
                           match="fam_scrolls_quality: field output is empty"):
    read("fam_scrolls_quality", {"inputs": 64, "targets": 8}, "train")


def test_xlsum(monkeypatch):
  monkeypatch.setenv("FAM_XLSUM_DIR", str(FIXTURES / "xlsum"))
  for split, file_split in [("train", "train"), ("validation", "val"),
                            ("test", "test")]:
    rows = [json.loads(line) for line in
            (FIXTURES / "xlsum" / f"english_{file_split}.jsonl")
            .read_text().splitlines()]
    examples = read("fam_xlsum", {"inputs": 1024, "targets": 64}, split)
    assert [VOCAB.decode(e["inputs"].tolist()) for e in examples] == [
        f"Article: {r['text']}\n\nOne-sentence summary:" for r in rows]
    assert [e["targets_pretokenized"].decode() for e in examples] == [
        r["summary"] for r in rows]
  # A long article loses its end, never the instruction after it.
  (ex, _) = read("fam_xlsum", {"inputs": 60, "targets": 64}, "train")
  text = VOCAB.decode(ex["inputs"].tolist())
  assert len(ex["inputs"]) == 60
  assert text.startswith("Article: The town council")
  assert text.endswith("\n\nOne-sentence summary:")
  task = seqio.get_mixture_or_task("fam_xlsum")
  assert task.predict_metric_fns == [metrics.rouge_l]


def test_pg19():
  assert "book_text" in tfds.builder("pg19").info.features
  book = "CHAPTER I.\n\nIt was a dark and stormy night. " * 10
  rows = [{"book_text": book, "book_id": np.int32(7), "book_title": "T",
           "publication_date": "1900", "book_link": "l"}]
  mock, asked = mock_rows(rows)
  with mock:
    (ex,) = read("fam_pg19", {"targets": 100}, "test")
    (whole,) = read("fam_pg19", {"targets": 4096}, "test")
  assert asked == ["pg19", "pg19"]
  assert set(ex) == {"targets"}
  assert ex["targets"].tolist() == VOCAB.encode(book)[:100]  # The start.
  assert whole["targets"].tolist() == VOCAB.encode(book)     # No EOS.
  task = seqio.get_mixture_or_task("fam_pg19")
  assert task.predict_with_aux_metric_fns == [
      metrics.next_token_accuracy_with_aux]


def test_isabelle(monkeypatch):
  root = FIXTURES / "isabelle"
  monkeypatch.setenv("FAM_ISABELLE_DIR", str(root))
  for split in ("train", "validation", "test"):
    files = sorted((root / split).glob("**/*.thy"))
    examples = read("fam_isabelle", {"targets": 4096}, split)
    assert [e["targets"].tolist() for e in examples] == [
        VOCAB.encode(f.read_text()) for f in files]
  (ex, _) = read("fam_isabelle", {"targets": 16}, "train")
  assert VOCAB.decode(ex["targets"].tolist()) == "theory Add impor"
  task = seqio.get_mixture_or_task("fam_isabelle")
  assert task.predict_with_aux_metric_fns == [
      metrics.next_token_accuracy_with_aux]
