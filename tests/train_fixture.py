"""A small, fast LM task for trainer tests: `test_text_hamlet`, Hamlet's opening
(tests/fixtures) in bytes, cut into rows. Import it in a fam-train process with
--module_import=train_fixture (tests/ on PYTHONPATH), or in a test."""

import os

import seqio

import fam_jax.tasks  # noqa: F401  (the task helpers)
from fam_jax.tasks import text

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
TASK = "test_text_hamlet"

if TASK not in seqio.TaskRegistry.names():
  text.register_text_task(
      TASK, {"train": os.path.join(FIXTURES, "hamlet_opening.txt"),
             "validation": os.path.join(FIXTURES, "botchan_chapter1.txt")},
      vocabulary=seqio.ByteVocabulary())

# The tiny model every trainer test trains: FAM, 2 layers, bytes.
MODEL_BINDINGS = [
    "FamConfig.vocab_size = 259", "FamConfig.num_layers = 2",
    "FamConfig.d_model = 32", "FamConfig.num_heads = 4",
    "FamConfig.num_kv_heads = 2", "FamConfig.mlp_dim = 64",
    "FamConfig.attention = 'fam'", "FamConfig.block_size = 16",
    "FamConfig.memory_segments = 1", "FamConfig.fam_length = 4",
    "FamConfig.lora_rank = 4", "FamConfig.remat = 'none'",
]
