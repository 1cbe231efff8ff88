"""The one reader of the JSON files fam-jax keeps or reads (checkpoint and stream
configs, tokenizer files, Hugging Face configs): its errors name the file."""

from __future__ import annotations

import json
from typing import Any


def read_json(path: str, error: type = ValueError) -> Any:
  """json.load whose errors (raised as `error`) name the file."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise error(f"{path}: not valid JSON ({e})") from None
