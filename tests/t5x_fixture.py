"""Tasks for the t5x end-to-end tests: Hamlet rows (train_fixture) to train on,
and `test_passkey_t5x`, four short PassKey prompts (200-260 filler bytes) to
decode. Imported by t5x.train / t5x.infer through MIXTURE_OR_TASK_MODULE
(tests/ on PYTHONPATH), or by a test."""

import seqio

from fam_jax.tasks import passkey
from train_fixture import TASK as TRAIN_TASK  # noqa: F401  (registers it)

PASSKEY_TASK = "test_passkey_t5x"

if PASSKEY_TASK not in seqio.TaskRegistry.names():
  passkey.register_passkey_task(PASSKEY_TASK, (200, 260), num_examples=4,
                                splits=("validation",))
