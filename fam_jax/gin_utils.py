"""Finding and parsing the project's gin files, and writing a FamConfig as one.

The gin files sit in gin_configs/ at the top of the repository, which installs
as the package `fam_jax.gin_configs` (pyproject.toml maps it), so they are
found the same way in a normal and in an editable install.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import importlib.util  # noqa: F401  gin's resource reader uses it without importing it
import logging
import pathlib
from typing import Sequence

import gin


def _gin_configs_dir() -> pathlib.Path:
  try:
    return pathlib.Path(str(importlib.resources.files("fam_jax.gin_configs")))
  except ModuleNotFoundError:
    raise ImportError(
        "fam_jax.gin_configs is not installed: this fam-jax install predates "
        "gin_configs/ being package data; reinstall it (pip install -e .)"
    ) from None


GIN_CONFIGS_DIR = _gin_configs_dir()
# The gin file a checkpoint directory carries with its FamConfig (fam-convert's
# output, fam-train's export).
MODEL_GIN_FILE = "model.gin"


def parse_gin(files: Sequence[str] = (), bindings: Sequence[str] = ()) -> None:
  """Parses gin files and `--gin.X=Y`-style bindings.

  Files are looked up as given, then under gin_configs/ (so 'models/tiny.gin'
  works from anywhere). The config is left unlocked.
  """
  gin.add_config_file_search_path(str(GIN_CONFIGS_DIR))
  with _quiet_path_probes():
    gin.parse_config_files_and_bindings(list(files), list(bindings),
                                        finalize_config=False)


class _DropPathProbes(logging.Filter):
  """gin logs 'Path not found' at ERROR for every path it merely tries before
  its search paths; those are not errors."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Path not found")


@contextlib.contextmanager
def _quiet_path_probes():
  probe_filter = _DropPathProbes()
  root = logging.getLogger()
  root.addFilter(probe_filter)
  try:
    yield
  finally:
    root.removeFilter(probe_filter)


def config_to_gin(cfg, header: str = "") -> str:
  """A gin file binding every FamConfig field of `cfg` (as gin_configs/models)."""
  lines = [f"# {line}" for line in header.splitlines()]
  lines += ["from __gin__ import dynamic_registration",
            "from fam_jax import config", "", "config.FamConfig:"]
  for field in dataclasses.fields(cfg):
    value = getattr(cfg, field.name)
    lines.append(f"  {field.name} = {value!r}")
  return "\n".join(lines) + "\n"
