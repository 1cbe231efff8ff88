"""Crash-safe training checkpoints: orbax's CheckpointManager under a run directory.

Layout of `--model_dir`:

    fam_config.json        the model's FamConfig (fam-jax checkpoint format), and
    train_config.gin       the operative gin of the first start
    checkpoints/<step>/    state/ (TrainState: params, optimizer state, PRNG key,
                           the FAM passed between steps) and meta/ (JSON: step,
                           batches consumed)
    export/                at the end, on request: a fam-jax checkpoint with
                           merged LoRA (what fam-generate and fam-convert write)

orbax writes each step into a temporary directory and renames it when complete, so
a run killed at any moment, even mid-write, leaves only whole checkpoints; saving
is asynchronous (training continues while the previous step is written). Because
`fam_config.json` sits beside the checkpoints, `checkpoint.load_checkpoint` reads a
run directory directly (the newest step's params).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import orbax.checkpoint as ocp

CHECKPOINTS_DIR = "checkpoints"


class RunCheckpoints:
  """Saves and restores the TrainState of one run directory."""

  def __init__(self, model_dir: str, keep: int, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(model_dir), CHECKPOINTS_DIR)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save),
        item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts writing `state` as checkpoint `step` (returns before it is done)."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                       force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """(state laid out as `abstract_state`'s shardings, meta) of checkpoint step."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def latest_step(model_dir: str) -> Optional[int]:
  """The newest complete checkpoint of a run, read without creating anything.

  orbax gives a step its final name (the step number) only once it is complete;
  a write cut short leaves a temporary name, which this ignores.
  """
  directory = os.path.join(os.path.abspath(model_dir), CHECKPOINTS_DIR)
  if not os.path.isdir(directory):
    return None
  steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
  return max(steps) if steps else None
