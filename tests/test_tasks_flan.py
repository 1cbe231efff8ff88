"""The Flan Collection tasks, mixture and packed training rows, read end to
end from fixture rows in the released export format."""

import collections
import json
import pathlib
import shutil

import gin
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio
import tensorflow as tf

import fam_jax.tasks  # noqa: F401  (registers the tasks)
from fam_jax.tasks import flan
from fam_jax.tasks import recipe

VOCAB = seqio.ByteVocabulary()
FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "tasks" / "flan"
EXPORT_FIELDS = {"inputs", "targets", "task_source", "task_name",
                 "template_type"}


def fixture_rows(submixture):
  path = FIXTURES / flan.export_folder(submixture) / "data" / "train.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()]


def example_text(row):
  return row["inputs"] + "\n" + row["targets"]


@pytest.fixture
def flan_dir(monkeypatch):
  monkeypatch.setenv("FAM_FLAN_DIR", str(FIXTURES))
  return FIXTURES


def read(name, lengths, n=None, seed=None, split="train"):
  provider = seqio.get_mixture_or_task(name)
  kwargs = dict(sequence_length=lengths, split=split, try_in_mem_cache=False)
  if seed is None:
    kwargs["shuffle"] = False
  else:
    kwargs["seed"] = seed
  ds = provider.get_dataset(**kwargs)
  return list((ds.take(n) if n else ds).as_numpy_iterator())


def test_published_mixing_rates():
  assert flan.SUBMIXTURE_RATES == {"flan2021": 0.4, "t0": 0.32, "niv2": 0.2,
                                   "cot": 0.05, "dialog": 0.03}
  mixture = seqio.get_mixture_or_task(flan.MIXTURE_NAME)
  assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == {
      f"fam_flan_{s}": r for s, r in flan.SUBMIXTURE_RATES.items()}


def test_fixtures_are_in_the_export_format():
  for submixture in flan.SUBMIXTURE_RATES:
    rows = fixture_rows(submixture)
    assert rows and all(set(r) == EXPORT_FIELDS for r in rows)


@pytest.mark.parametrize("submixture", list(flan.SUBMIXTURE_RATES))
def test_submixture_tasks(flan_dir, submixture):
  rows = fixture_rows(submixture)
  examples = read(f"fam_flan_{submixture}", {"targets": 1024})
  assert len(examples) == len(rows)
  for ex, row in zip(examples, rows):
    targets, weights = ex["targets"], ex["loss_weights"]
    assert targets.dtype == np.int32 and weights.dtype == np.float32
    assert targets.tolist() == VOCAB.encode(example_text(row)) + [1]
    prompt = len(VOCAB.encode(row["inputs"] + "\n"))
    np.testing.assert_array_equal(weights[:prompt], 0)
    np.testing.assert_array_equal(weights[prompt:], 1)


def test_parquet_export_reads_the_same(tmp_path, monkeypatch):
  # The Hugging Face export: Parquet shards under data/, more columns than
  # the task reads.
  for submixture in flan.SUBMIXTURE_RATES:
    folder = tmp_path / flan.export_folder(submixture) / "data"
    folder.mkdir(parents=True)
    rows = fixture_rows(submixture)
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}),
                   folder / "train-00000-of-00001.parquet")
  monkeypatch.setenv("FAM_FLAN_DIR", str(tmp_path))
  examples = read("fam_flan_t0", {"targets": 1024})
  assert [VOCAB.decode(e["targets"].tolist()) for e in examples] == [
      example_text(r) for r in fixture_rows("t0")]


def test_mixture_draws_examples_at_the_published_rates(flan_dir):
  texts = {example_text(r): s for s in flan.SUBMIXTURE_RATES
           for r in fixture_rows(s)}
  drawn = read(flan.MIXTURE_NAME, {"targets": 1024}, n=2000, seed=0)
  counts = collections.Counter(texts[VOCAB.decode(e["targets"].tolist())]
                               for e in drawn)
  for submixture, rate in flan.SUBMIXTURE_RATES.items():
    sigma = np.sqrt(rate * (1 - rate) / len(drawn))
    assert abs(counts[submixture] / len(drawn) - rate) < 4 * sigma, counts


def test_packed_training_rows(flan_dir):
  length = 700
  texts = {VOCAB.decode(VOCAB.encode(example_text(r))): r
           for s in flan.SUBMIXTURE_RATES for r in fixture_rows(s)}
  prompt_ids = VOCAB.encode(recipe.REPEAT_SEGMENT_PROMPT)
  rows = read(flan.PACKED_TASK_NAME, {"targets": length}, n=6, seed=1)
  for row in rows:
    targets, weights = row["targets"], row["loss_weights"]
    assert targets.shape == weights.shape == (length,)
    segment = np.isclose(weights, recipe.REPEAT_SEGMENT_WEIGHT)
    n_segment = int(segment.sum())
    used = int(np.nonzero(targets)[0][-1]) + 1
    end = used - n_segment - len(prompt_ids)       # End of the examples.
    assert end <= length - recipe.REPEAT_SEGMENT_LENGTH - len(prompt_ids)
    assert targets[end:end + len(prompt_ids)].tolist() == prompt_ids
    assert segment[used - n_segment:used].all() and not segment[:end].any()
    assert not weights[end:used - n_segment].any()  # The prompt: weight 0.
    assert not targets[used:].any() and not weights[used:].any()
    content = targets[:end]
    windows = np.lib.stride_tricks.sliding_window_view(content, n_segment)
    assert (windows == targets[used - n_segment:used]).all(axis=1).any()
    # Whole examples follow one another (no masks), each weighted 0 on its
    # prompt and 1 on its answer and EOS. (The last may continue in the next
    # row only if it is longer than a row, which no fixture is.)
    eos_at = np.nonzero(content == VOCAB.eos_id)[0]
    starts = np.concatenate([[0], eos_at + 1])
    for s, e in zip(starts[:-1], eos_at):
      text = VOCAB.decode(content[s:e].tolist())
      assert text in texts
      prompt = len(VOCAB.encode(texts[text]["inputs"] + "\n"))
      np.testing.assert_array_equal(weights[s:s + prompt], 0)
      np.testing.assert_array_equal(weights[s + prompt:e + 1], 1)


def test_auxiliary_target_settings_follow_gin(flan_dir):
  gin.parse_config("""
      auxiliary_target.segment_length = 32
      auxiliary_target.weight = 0.25
  """)
  try:
    rows = read(flan.PACKED_TASK_NAME, {"targets": 400}, n=3, seed=1)
  finally:
    gin.clear_config()
  for row in rows:
    weights = row["loss_weights"]
    assert np.isclose(weights, 0.25).sum() == 32
    assert not np.isclose(weights, 0.1).any()
  # Rows reserve room for the shorter target only, so they hold more
  # example tokens than a 256-token target would leave room for.
  prompt = len(VOCAB.encode(recipe.REPEAT_SEGMENT_PROMPT))
  content = [int(np.nonzero(r["targets"])[0][-1]) + 1 - 32 - prompt
             for r in rows]
  assert max(content) > 400 - 256 - prompt


def test_missing_directory_field_and_empty_text_are_named(
    monkeypatch, tmp_path):
  monkeypatch.delenv("FAM_FLAN_DIR", raising=False)
  with pytest.raises(ValueError, match="FAM_FLAN_DIR"):
    read("fam_flan_cot", {"targets": 64})
  for submixture in ("cot", "dialog"):
    shutil.copytree(FIXTURES / flan.export_folder(submixture),
                    tmp_path / flan.export_folder(submixture))
  monkeypatch.setenv("FAM_FLAN_DIR", str(tmp_path))
  bad = tmp_path / flan.export_folder("cot") / "data" / "more.jsonl"
  bad.write_text(json.dumps({"inputs": "no answer here"}) + "\n")
  with pytest.raises(ValueError, match="more.jsonl line 1: missing field "
                     "'targets'"):
    read("fam_flan_cot", {"targets": 256})
  bad.write_text(json.dumps({"inputs": "", "targets": "x"}) + "\n")
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="task fam_flan_cot: field inputs is empty"):
    read("fam_flan_cot", {"targets": 256})
