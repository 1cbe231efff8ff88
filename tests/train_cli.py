"""Running fam-train in a child process, for the trainer's end-to-end tests."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

from train_fixture import MODEL_BINDINGS, TASK

TESTS = os.path.dirname(os.path.abspath(__file__))

# One persistent compilation cache for every fam-train these tests start: the
# tiny model compiles once per shape, not once per run (most of a run's time).
JAX_CACHE = tempfile.mkdtemp(prefix="fam_train_test_jax_cache_")
atexit.register(shutil.rmtree, JAX_CACHE, ignore_errors=True)

# A 2-layer FAM model with LoRA on 64-byte rows of Hamlet's opening.
RUN_BINDINGS = MODEL_BINDINGS + [
    f"TrainConfig.mixture_or_task_name = '{TASK}'",
    "TrainConfig.sequence_length = 64", "TrainConfig.batch_size = 2",
    "TrainConfig.log_every = 1", "TrainConfig.checkpoint_every = 1",
    "TrainConfig.keep_checkpoints = 2",
]


def command(model_dir, *bindings, extra=("--no_progress",)):
  return ([sys.executable, "-m", "fam_jax.cli.train", f"--model_dir={model_dir}",
           "--module_import=train_fixture", f"--jax_cache_dir={JAX_CACHE}", *extra]
          + [f"--gin.{b}" for b in RUN_BINDINGS + list(bindings)])


def environment():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(
      [TESTS] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


def run(model_dir, *bindings, extra=("--no_progress",), timeout=900):
  """Runs fam-train to the end; the CompletedProcess."""
  return subprocess.run(command(model_dir, *bindings, extra=extra),
                        env=environment(), capture_output=True, text=True,
                        timeout=timeout)


def start(model_dir, *bindings, extra=("--no_progress",)):
  """Starts fam-train; the Popen (stderr to a file in model_dir's parent)."""
  log = open(f"{model_dir}.log", "a")
  return subprocess.Popen(command(model_dir, *bindings, extra=extra),
                          env=environment(), stdout=log, stderr=log)
