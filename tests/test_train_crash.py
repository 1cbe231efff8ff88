"""Crash safety: a run killed with SIGKILL three times (while starting, in the
middle of a checkpoint write, after a step), then stopped once with SIGTERM (which saves and exits 0), ends
with exactly (bitwise) the parameters and the loss sequence of a run that was
never interrupted, and never leaves an unreadable checkpoint behind."""

import os
import random
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from fam_jax.train import checkpoints, observe
import train_cli

STEPS = 12


def train_losses(model_dir):
  return {r["step"]: r["loss"] for r in observe.read_metrics(model_dir)
          if r["split"] == "train"}


def restore_state(model_dir, step):
  path = os.path.join(model_dir, checkpoints.CHECKPOINTS_DIR, str(step), "state")
  return ocp.StandardCheckpointer().restore(path)


def in_flight_write(model_dir):
  directory = os.path.join(model_dir, checkpoints.CHECKPOINTS_DIR)
  return os.path.isdir(directory) and any(
      not name.isdigit() for name in os.listdir(directory))


def kill_when(process, ready, timeout=300.0, delay=0.0, stop=None):
  """SIGKILLs `process` (or calls stop()) `delay` seconds after ready() holds
  (polled every 2 ms), then waits for it to end."""
  deadline = time.time() + timeout
  while not ready():
    if process.poll() is not None:
      raise AssertionError(f"fam-train ended before it was killed: "
                           f"{process.returncode}")
    if time.time() > deadline:
      process.kill()
      raise AssertionError("fam-train made no progress")
    time.sleep(0.002)
  time.sleep(delay)
  (stop or process.kill)()
  process.wait(timeout=timeout)


def test_sigkill_three_times_resumes_bitwise(tmp_path):
  steps = f"TrainConfig.train_steps = {STEPS}"
  reference = str(tmp_path / "reference")
  done = train_cli.run(reference, steps)
  assert done.returncode == 0, done.stderr[-3000:]
  want_losses = train_losses(reference)
  assert sorted(want_losses) == list(range(1, STEPS + 1))

  crashed = str(tmp_path / "crashed")
  rng = random.Random(0)
  # One kill of each kind: the first version killed five times (mid-write and
  # after-step twice each), which cost CI two more minutes.
  for kind in ["startup", "mid-write", "after-step", "sigterm"]:
    before = max(train_losses(crashed), default=0)
    progressed = lambda: max(train_losses(crashed), default=0) > before
    process = train_cli.start(crashed, steps)
    if kind == "startup":  # while restoring, reading data or compiling
      started, delay = time.time(), rng.uniform(1.0, 6.0)
      kill_when(process, lambda: time.time() - started > delay)
    elif kind == "mid-write":  # a checkpoint orbax has not yet renamed
      kill_when(process, lambda: progressed() and in_flight_write(crashed))
    elif kind == "after-step":  # at a random moment after training resumed
      kill_when(process, progressed, delay=rng.uniform(0.0, 0.2))
    else:  # SIGTERM: the step in flight ends, is saved, and the run exits 0
      kill_when(process, progressed, stop=lambda: process.send_signal(signal.SIGTERM))
      assert process.returncode == 0
      step = max(train_losses(crashed))
      assert checkpoints.latest_step(crashed) == step
      with open(f"{crashed}.log") as f:
        assert (f"SIGTERM: stopped at step {step}; checkpoint saved, rerun the "
                "same command to continue") in f.read()
    # Whatever the moment, the newest complete checkpoint reads back.
    latest = checkpoints.latest_step(crashed)
    if latest is not None:
      assert int(restore_state(crashed, latest)["step"]) == latest
  assert max(train_losses(crashed), default=0) < STEPS, "never interrupted"

  done = train_cli.run(crashed, steps)
  assert done.returncode == 0, done.stderr[-3000:]
  assert train_losses(crashed) == want_losses  # bitwise: floats compared exactly
  got, want = restore_state(crashed, STEPS), restore_state(reference, STEPS)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got),
                          jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
