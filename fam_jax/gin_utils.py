"""Finding and parsing the project's gin files (gin_configs/ at the repo root)."""

from __future__ import annotations

import importlib.util  # noqa: F401  gin's resource reader uses it without importing it
import pathlib
from typing import Sequence

import gin

GIN_CONFIGS_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin_configs"


def parse_gin(files: Sequence[str] = (), bindings: Sequence[str] = ()) -> None:
  """Parses gin files and `--gin.X=Y`-style bindings.

  Files are looked up as given, then under gin_configs/ (so 'models/tiny.gin'
  works from anywhere).
  """
  gin.add_config_file_search_path(str(GIN_CONFIGS_DIR))
  gin.parse_config_files_and_bindings(list(files), list(bindings))
