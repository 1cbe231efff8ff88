"""Data sources for local files and Python generators, and where local data
lives.

Besides TFDS (`seqio.TfdsDataSource`), a task reads files the user has put in
a directory (`FileSource`) or examples made by Python code
(`GeneratorSource`). Local directories are named once, by gin or by the
environment (gin wins):

    local_data_dir.directories = {"flan": "/data/flan", "xlsum": "/data/xlsum"}
    export FAM_FLAN_DIR=/data/flan FAM_XLSUM_DIR=/data/xlsum

File formats, chosen by extension unless `file_format` is given:
- `.jsonl` / `.json`: JSON Lines, one object per line (blank lines skipped);
- `.parquet`: Apache Parquet (what the Hugging Face hub serves), string
  columns;
- anything else: plain UTF-8 text, one whole file per example in `text_field`.

Errors name the file and field. Missing files, an unknown split, a Parquet
schema without a required string column and a first JSON line without a
required field are found when `get_dataset` is called (`FileNotFoundError` /
`ValueError`). Problems of later rows (a JSON line without the field, a null,
a non-string value) are found while reading; inside a tf.data pipeline
TensorFlow re-raises them as `tf.errors.InvalidArgumentError` carrying the
same message. `FileSource.validate(split)` reads a split in plain Python and
raises the `ValueError` directly.
"""

from __future__ import annotations

import glob
import inspect
import json
import os
from typing import (Any, Callable, Iterable, Iterator, Mapping, Optional,
                    Sequence, Union)

import gin
import numpy as np
import seqio
import tensorflow as tf

FORMATS = ("jsonl", "parquet", "text")
_EXTENSION_FORMATS = {".jsonl": "jsonl", ".json": "jsonl",
                      ".parquet": "parquet"}
_PARQUET_BATCH_ROWS = 256


@gin.configurable(module="fam_jax.tasks")
def local_data_dir(name: str,
                   directories: Optional[Mapping[str, str]] = None) -> str:
  """The directory holding the local copy of data set `name` (e.g. "flan").

  Args:
    name: short name of the data set; its environment variable is
      `FAM_<NAME>_DIR`.
    directories: gin-bound {name: directory}; takes precedence over the
      environment.

  Returns:
    The directory.

  Raises:
    ValueError: neither gin nor the environment names one.
  """
  env_var = f"FAM_{name.upper()}_DIR"
  directory = (directories or {}).get(name) or os.environ.get(env_var)
  if not directory:
    raise ValueError(
        f"no local directory for '{name}': set the environment variable "
        f"{env_var} or the gin binding local_data_dir.directories = "
        f"{{'{name}': '/path'}}")
  return directory


def _infer_format(path: str) -> str:
  return _EXTENSION_FORMATS.get(os.path.splitext(path)[1].lower(), "text")


def _check_value(value: Any, field: str, where: str) -> str:
  if value is None:
    raise ValueError(f"{where}: field '{field}' is null")
  if not isinstance(value, str):
    raise ValueError(f"{where}: field '{field}' is a {type(value).__name__}, "
                     "expected a string")
  return value


def _read_jsonl(path: str, fields: Sequence[str]) -> Iterator[dict[str, str]]:
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path} line {line_number}"
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
      if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got "
                         f"{type(row).__name__}")
      missing = [k for k in fields if k not in row]
      if missing:
        raise ValueError(f"{where}: missing field '{missing[0]}' (it has "
                         f"{sorted(row)})")
      yield {k: _check_value(row[k], k, where) for k in fields}


def _parquet_file(path: str, fields: Sequence[str]):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  try:
    parquet = pq.ParquetFile(path)
  except (pa.ArrowInvalid, OSError) as e:
    raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
  schema = parquet.schema_arrow
  for k in fields:
    if k not in schema.names:
      raise ValueError(f"{path}: missing field '{k}' (its columns are "
                       f"{schema.names})")
    if not (pa.types.is_string(schema.field(k).type)
            or pa.types.is_large_string(schema.field(k).type)):
      raise ValueError(f"{path}: field '{k}' has type {schema.field(k).type}, "
                       "expected a string column")
  return parquet


def _read_parquet(path: str, fields: Sequence[str]) -> Iterator[dict[str, str]]:
  parquet = _parquet_file(path, fields)
  first_row = 0
  for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS,
                                    columns=list(fields)):
    columns = batch.to_pydict()
    for i in range(batch.num_rows):
      where = f"{path} row {first_row + i}"
      yield {k: _check_value(columns[k][i], k, where) for k in fields}
    first_row += batch.num_rows


def _read_text(path: str, text_field: str) -> Iterator[dict[str, str]]:
  try:
    with open(path, encoding="utf-8") as f:
      yield {text_field: f.read()}
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text ({e})") from None


def _first_jsonl_row(path: str, fields: Sequence[str]) -> None:
  """Checks the first row now, so a wrong field name fails before TF runs."""
  for _ in _read_jsonl(path, fields):
    return


class FileSource(seqio.DataSource):
  """Examples of string fields from local JSON Lines, Parquet or text files.

  Each example is a dict of scalar `tf.string`s, one per field in `fields`
  (other columns are ignored). Files are listed when `get_dataset` is called, so
  a source can be registered before its directory exists.
  """

  def __init__(self,
               split_patterns: Mapping[str, Union[str, Sequence[str]]],
               fields: Sequence[str],
               *,
               root: Union[None, str, Callable[[], str]] = None,
               file_format: Optional[str] = None,
               text_field: str = "text"):
    """Creates the source.

    Args:
      split_patterns: split name -> glob pattern(s); relative patterns are taken
        under `root`. `**` matches any depth.
      fields: the string fields every example must have.
      root: directory of relative patterns, or a function returning it (called
        at read time, e.g. `lambda: local_data_dir("flan")`).
      file_format: `jsonl`, `parquet` or `text`; None infers it per file from
        the extension.
      text_field: the field a whole text file goes into (format `text`).
    """
    if file_format is not None and file_format not in FORMATS:
      raise ValueError(f"file_format={file_format!r}: expected one of "
                       f"{FORMATS} or None")
    if not fields:
      raise ValueError("FileSource needs at least one field")
    self._split_patterns = {
        k: (v,) if isinstance(v, str) else tuple(v)
        for k, v in split_patterns.items()}
    self._fields = tuple(fields)
    self._root = root
    self._file_format = file_format
    self._text_field = text_field
    super().__init__(splits=self._split_patterns.keys())

  @property
  def fields(self) -> tuple[str, ...]:
    return self._fields

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def __repr__(self):
    return (f"FileSource({self._split_patterns}, fields={self._fields}, "
            f"format={self._file_format or 'by extension'})")

  def _patterns(self, split: str) -> tuple[str, ...]:
    if split not in self._split_patterns:
      raise ValueError(f"{self!r} has no split '{split}'")
    root = self._root() if callable(self._root) else self._root
    return tuple(
        p if root is None or os.path.isabs(p) else os.path.join(root, p)
        for p in self._split_patterns[split])

  def list_shards(self, split: str) -> list[str]:
    patterns = self._patterns(split)
    files = sorted({f for p in patterns for f in glob.glob(p, recursive=True)
                    if os.path.isfile(f)})
    if not files:
      raise FileNotFoundError(f"no file matches {list(patterns)} (split "
                              f"'{split}')")
    return files

  def _format(self, path: str) -> str:
    return self._file_format or _infer_format(path)

  def read_file(self, path: str) -> Iterator[dict[str, str]]:
    """The examples of one file, as Python dicts, checked field by field."""
    file_format = self._format(path)
    if file_format == "jsonl":
      return _read_jsonl(path, self._fields)
    if file_format == "parquet":
      return _read_parquet(path, self._fields)
    if self._fields != (self._text_field,):
      raise ValueError(f"{path}: a text file gives the single field "
                       f"'{self._text_field}', but fields {self._fields} are "
                       "required")
    return _read_text(path, self._text_field)

  def _check_structure(self, path: str) -> None:
    file_format = self._format(path)
    if file_format == "parquet":
      _parquet_file(path, self._fields)
    elif file_format == "jsonl":
      _first_jsonl_row(path, self._fields)
    elif self._fields != (self._text_field,):
      self.read_file(path)

  def validate(self, split: str) -> int:
    """Reads every example of `split` in Python; returns how many there are."""
    return sum(1 for path in self.list_shards(split)
               for _ in self.read_file(path))

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None,
                  **unused_kwargs) -> tf.data.Dataset:
    files = self.list_shards(split)
    if shard_info is not None:
      files = files[shard_info.index::shard_info.num_shards]
    for path in files:
      self._check_structure(path)
    signature = {k: tf.TensorSpec((), tf.string) for k in self._fields}

    def one_file(path):
      return tf.data.Dataset.from_generator(
          lambda p: self.read_file(p.decode("utf-8")), args=(path,),
          output_signature=signature)

    paths = tf.data.Dataset.from_tensor_slices(np.array(files, dtype=str))
    if not shuffle:
      return paths.flat_map(one_file)
    paths = paths.shuffle(len(files), seed=seed)
    return paths.interleave(one_file, cycle_length=min(len(files), 16),
                            block_length=1)


class GeneratorSource(seqio.DataSource):
  """Examples produced by a Python function, for synthetic or custom data.

  `fn(split)` returns an iterable of dicts whose values match
  `output_signature`. If `fn` also takes `shard_info`, it is given the
  `seqio.ShardInfo` (or None) and must yield only that shard's examples; else
  seqio shards the examples it yields.
  """

  def __init__(self,
               fn: Callable[..., Iterable[Mapping[str, Any]]],
               splits: Sequence[str],
               output_signature: Union[Sequence[str],
                                       Mapping[str, tf.TensorSpec]],
               num_input_examples: Optional[Mapping[str, int]] = None):
    """Creates the source.

    Args:
      fn: `fn(split)` or `fn(split, shard_info=...)` -> iterable of dicts.
      splits: the split names `fn` understands.
      output_signature: field name -> tf.TensorSpec, or a list of field names
        that are all scalar strings.
      num_input_examples: optional split -> number of examples.
    """
    if not isinstance(output_signature, Mapping):
      output_signature = {k: tf.TensorSpec((), tf.string)
                          for k in output_signature}
    self._fn = fn
    self._signature = dict(output_signature)
    self._takes_shard_info = "shard_info" in inspect.signature(fn).parameters
    super().__init__(splits=splits, num_input_examples=num_input_examples)

  @property
  def fields(self) -> tuple[str, ...]:
    return tuple(self._signature)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return self._takes_shard_info

  def __repr__(self):
    return f"GeneratorSource({getattr(self._fn, '__name__', self._fn)})"

  def list_shards(self, split: str) -> list[str]:
    return [split]

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None,
                  **unused_kwargs) -> tf.data.Dataset:
    del shuffle, seed  # The function decides the order; seqio shuffles after.
    if split not in self.splits:
      raise ValueError(f"{self!r} has no split '{split}' (it has "
                       f"{list(self.splits)})")
    kwargs = {"shard_info": shard_info} if self._takes_shard_info else {}
    fields = list(self._signature)

    strings = [k for k in fields if self._signature[k].dtype == tf.string]

    def generate():
      for i, example in enumerate(self._fn(split, **kwargs)):
        where = f"{self!r} example {i} of split '{split}'"
        missing = [k for k in fields if k not in example]
        if missing:
          raise ValueError(f"{where}: missing field '{missing[0]}' (it has "
                           f"{sorted(example)})")
        for k in strings:
          if not isinstance(example[k], (str, bytes)):
            raise ValueError(f"{where}: field '{k}' is a "
                             f"{type(example[k]).__name__}, expected a string")
        yield {k: example[k] for k in fields}

    return tf.data.Dataset.from_generator(generate,
                                          output_signature=self._signature)
