"""Local-file and generator sources, and where local data lives."""

import json

import gin
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio
import tensorflow as tf

from fam_jax.tasks import sources


def write_jsonl(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def read_all(source, split="train", **kwargs):
  ds = source.get_dataset(split, shuffle=False, **kwargs)
  return [{k: v.decode() for k, v in ex.items()}
          for ex in ds.as_numpy_iterator()]


def test_local_data_dir_gin_wins_over_environment(monkeypatch):
  monkeypatch.setenv("FAM_XLSUM_DIR", "/from/env")
  assert sources.local_data_dir("xlsum") == "/from/env"
  with gin.unlock_config():
    gin.bind_parameter("local_data_dir.directories", {"xlsum": "/from/gin"})
  try:
    assert sources.local_data_dir("xlsum") == "/from/gin"
  finally:
    gin.clear_config()
  monkeypatch.delenv("FAM_XLSUM_DIR")
  with pytest.raises(ValueError, match="FAM_XLSUM_DIR"):
    sources.local_data_dir("xlsum")


def test_file_source_reads_jsonl_parquet_and_text(tmp_path):
  write_jsonl(tmp_path / "a" / "one.jsonl",
              [{"q": "first", "a": "1", "extra": 5}, {"q": "second", "a": "2"}])
  (tmp_path / "a" / "blank.jsonl").write_text("\n")
  pq.write_table(pa.table({"q": ["third"], "a": ["3"], "n": [1]}),
                 tmp_path / "a" / "two.parquet")
  source = sources.FileSource({"train": "a/*"}, ["q", "a"], root=tmp_path)
  assert read_all(source) == [{"q": "first", "a": "1"},
                              {"q": "second", "a": "2"},
                              {"q": "third", "a": "3"}]
  (tmp_path / "t").mkdir()
  (tmp_path / "t" / "x.thy").write_text("theory X imports Main begin end")
  text = sources.FileSource({"test": str(tmp_path / "t" / "*.thy")}, ["text"])
  assert read_all(text, "test") == [{"text": "theory X imports Main begin end"}]


def test_root_is_resolved_only_when_reading(monkeypatch, tmp_path):
  monkeypatch.delenv("FAM_DEMO_DIR", raising=False)
  source = sources.FileSource({"train": "*.jsonl"}, ["x"],
                              root=lambda: sources.local_data_dir("demo"))
  with pytest.raises(ValueError, match="FAM_DEMO_DIR"):
    source.get_dataset("train")
  write_jsonl(tmp_path / "d.jsonl", [{"x": "ok"}])
  monkeypatch.setenv("FAM_DEMO_DIR", str(tmp_path))
  assert read_all(source) == [{"x": "ok"}]


def test_missing_files_and_unknown_split_are_named(tmp_path):
  source = sources.FileSource({"train": "nothing/*.jsonl"}, ["x"],
                              root=tmp_path)
  with pytest.raises(FileNotFoundError, match="nothing/\\*.jsonl"):
    source.get_dataset("train")
  with pytest.raises(ValueError, match="no split 'test'"):
    source.get_dataset("test")


def test_a_missing_field_names_file_line_and_field(tmp_path):
  path = write_jsonl(tmp_path / "rows.jsonl",
                     [{"q": "fine", "a": "1"}, {"q": "no answer"}])
  source = sources.FileSource({"train": str(path)}, ["q", "a"])
  with pytest.raises(ValueError, match="rows.jsonl line 2: missing field 'a'"):
    source.validate("train")
  # Inside tf.data the same message arrives wrapped by TensorFlow.
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="rows.jsonl line 2: missing field 'a'"):
    read_all(source)
  # A field missing from the first row fails before TensorFlow runs.
  first = write_jsonl(tmp_path / "first.jsonl", [{"q": "x"}])
  with pytest.raises(ValueError, match="first.jsonl line 1: missing field"):
    sources.FileSource({"train": str(first)}, ["q", "a"]).get_dataset()


def test_bad_values_and_columns_are_named(tmp_path):
  bad = write_jsonl(tmp_path / "bad.jsonl", [{"q": 7}])
  with pytest.raises(ValueError, match="field 'q' is a int, expected a str"):
    sources.FileSource({"train": str(bad)}, ["q"]).validate("train")
  null = write_jsonl(tmp_path / "null.jsonl", [{"q": None}])
  with pytest.raises(ValueError, match="field 'q' is null"):
    sources.FileSource({"train": str(null)}, ["q"]).validate("train")
  (tmp_path / "broken.jsonl").write_text("{not json\n")
  with pytest.raises(ValueError, match="broken.jsonl line 1: not valid JSON"):
    sources.FileSource({"train": str(tmp_path / "broken.jsonl")},
                       ["q"]).validate("train")
  pq.write_table(pa.table({"q": [1, 2]}), tmp_path / "ints.parquet")
  with pytest.raises(ValueError, match="field 'q' has type int64"):
    sources.FileSource({"train": str(tmp_path / "ints.parquet")},
                       ["q"]).get_dataset()
  pq.write_table(pa.table({"other": ["x"]}), tmp_path / "cols.parquet")
  with pytest.raises(ValueError, match="cols.parquet: missing field 'q'"):
    sources.FileSource({"train": str(tmp_path / "cols.parquet")},
                       ["q"]).get_dataset()


def test_file_source_shards_by_file(tmp_path):
  for i in range(4):
    write_jsonl(tmp_path / f"{i}.jsonl", [{"x": str(i)}])
  source = sources.FileSource({"train": "*.jsonl"}, ["x"], root=tmp_path)
  shards = [read_all(source, shard_info=seqio.ShardInfo(i, 2))
            for i in range(2)]
  assert shards == [[{"x": "0"}, {"x": "2"}], [{"x": "1"}, {"x": "3"}]]


def test_generator_source_checks_fields_and_types():
  def generate(split):
    yield {"text": f"{split} ok", "extra": 1}
    yield {"text": 3}

  source = sources.GeneratorSource(generate, ["train"], ["text"])
  ds = source.get_dataset("train")
  it = ds.as_numpy_iterator()
  assert next(it) == {"text": b"train ok"}
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="example 1 of split 'train': field 'text' is a int"):
    next(it)
  with pytest.raises(ValueError, match="no split 'test'"):
    source.get_dataset("test")
