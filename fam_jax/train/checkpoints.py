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

from fam_jax import checkpoint

CHECKPOINTS_DIR = checkpoint.RUN_CHECKPOINTS_DIR
# The TrainState's item name: checkpoint.load_checkpoint reads its params.
STATE_ITEM = checkpoint.RUN_STATE_DIR


class RunCheckpoints:
  """Saves and restores the TrainState of one run directory."""

  def __init__(self, model_dir: str, keep: int, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(model_dir), CHECKPOINTS_DIR)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save),
        item_names=(STATE_ITEM, "meta"))

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts writing `state` as checkpoint `step` (returns before it is done)."""
    self._manager.save(step, args=ocp.args.Composite(
        **{STATE_ITEM: ocp.args.StandardSave(state)},
        meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """(state laid out as `abstract_state`'s shardings, meta) of checkpoint step."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        **{STATE_ITEM: ocp.args.StandardRestore(abstract_state)},
        meta=ocp.args.JsonRestore()))
    return restored[STATE_ITEM], restored["meta"]

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def latest_step(model_dir: str) -> Optional[int]:
  """The newest complete checkpoint of a run, found without creating anything."""
  return checkpoint.newest_run_step(model_dir)
