"""Hugging Face checkpoints (config.json + safetensors) -> FamLM.

    params, cfg = convert_hf("/models/llama", attention="fam", fam_length=64)

A checkpoint directory holds `config.json` and either `model.safetensors` or the
shards listed in `model.safetensors.index.json`. Tensors are memory-mapped and
read one at a time, so the checkpoint is never held in memory as a whole; no
safetensors or torch package is needed.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import ml_dtypes
import numpy as np

from fam_jax.config import FamConfig
from fam_jax.convert.mapping import ConversionError, config_from_hf, convert_params
from fam_jax.jsonfile import read_json

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def load_hf_config(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise ConversionError(f"{path} not found: not a Hugging Face checkpoint "
                          "directory")
  config = read_json(path, ConversionError)
  if not isinstance(config, dict):
    raise ConversionError(f"{path}: expected a JSON object")
  return config



# safetensors dtype names -> NumPy dtypes (ml_dtypes supplies bfloat16 / float8).
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
}


def _read_header(path: str) -> tuple[dict[str, Any], int]:
  """A safetensors file's tensor table and the byte offset of its data.

  The format: an 8-byte little-endian header length, a JSON header
  {name: {dtype, shape, data_offsets: [begin, end]}}, then the raw data.
  """
  file_size = os.path.getsize(path)
  with open(path, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    if file_size < 8 or 8 + size > file_size:
      raise ConversionError(f"{path} is truncated or not a safetensors file: "
                            f"{file_size:,} bytes, its header needs {8 + size:,}")
    try:
      header = json.loads(f.read(size))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ConversionError(f"{path}: not a safetensors file ({e})") from None
  if not isinstance(header, dict):
    raise ConversionError(f"{path}: not a safetensors file (its header is not "
                          "a JSON object)")
  header.pop("__metadata__", None)
  end = max((_data_end(path, name, entry) for name, entry in header.items()),
            default=0)
  if 8 + size + end > file_size:
    raise ConversionError(f"{path} is truncated: {file_size:,} bytes, its "
                          f"tensors need {8 + size + end:,}")
  return header, 8 + size


def _data_end(path: str, name: str, entry: Any) -> int:
  try:
    return int(entry["data_offsets"][1])
  except (TypeError, KeyError, IndexError, ValueError):
    raise ConversionError(f"{path}: tensor {name!r} has no valid data_offsets "
                          "(not a safetensors file?)") from None


class SafetensorsCheckpoint:
  """The tensors of a (possibly sharded) safetensors checkpoint, by name.

  Tensors are memory-mapped: reading one touches only its own bytes.
  """

  def __init__(self, directory: str):
    index = os.path.join(directory, INDEX_FILE)
    single = os.path.join(directory, SINGLE_FILE)
    if os.path.exists(index):
      data = read_json(index, ConversionError)
      weight_map = data.get("weight_map") if isinstance(data, dict) else None
      if not isinstance(weight_map, dict):
        raise ConversionError(f"{index} has no 'weight_map' object")
      files = sorted(set(weight_map.values()))
      paths = [os.path.join(directory, name) for name in files]
    elif os.path.exists(single):
      paths = [single]
    else:
      raise ConversionError(f"{directory} has neither {SINGLE_FILE} nor "
                            f"{INDEX_FILE}")
    self._tensors = {}  # name -> (path, data offset, entry)
    for path in paths:
      if not os.path.exists(path):
        raise ConversionError(f"shard {path} listed in {INDEX_FILE} is missing")
      header, data_start = _read_header(path)
      for name, entry in header.items():
        self._tensors[name] = (path, data_start, entry)

  def shape(self, name: str) -> Optional[tuple[int, ...]]:
    if name not in self._tensors:
      return None
    return tuple(self._tensors[name][2]["shape"])

  def read(self, name: str) -> np.ndarray:
    path, data_start, entry = self._tensors[name]
    if entry["dtype"] not in _DTYPES:
      raise ConversionError(f"tensor {name!r} in {path} has dtype "
                            f"{entry['dtype']}; expected a float dtype "
                            f"({', '.join(_DTYPES)})")
    begin, end = entry["data_offsets"]
    dtype = np.dtype(_DTYPES[entry["dtype"]])
    shape = tuple(entry["shape"])
    if end - begin != dtype.itemsize * int(np.prod(shape)):
      raise ConversionError(f"tensor {name!r} in {path}: {end - begin} bytes "
                            f"do not hold {entry['dtype']}{list(shape)}")
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin,
                     shape=shape)


def convert_hf(directory: str, *, fam_init: str = "bos", seed: int = 0,
               **fam_fields) -> tuple[dict[str, Any], FamConfig]:
  """(FamLM params, FamConfig) of a Hugging Face checkpoint.

  Args:
    directory: holds config.json and the safetensors file(s).
    fam_init: how the summarization embeddings start (`mapping.init_summarization`).
    seed: seed of that initialisation.
    **fam_fields: FamConfig fields the checkpoint does not decide (attention,
      block_size, memory_segments, fam_length, param_dtype...).
  """
  hf = load_hf_config(directory)
  cfg = config_from_hf(hf, **fam_fields)
  params = convert_params(SafetensorsCheckpoint(directory), cfg,
                          fam_init=fam_init, seed=seed,
                          bos_token_id=hf.get("bos_token_id"))
  return params, cfg
