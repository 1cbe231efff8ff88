"""Model checkpoints: FamLM parameters (orbax) together with the FamConfig they fit.

Layout of a checkpoint directory:

    <dir>/fam_config.json   {"format": "fam-jax/1", "config": {FamConfig fields}}
    <dir>/params/           orbax StandardCheckpointer tree of the `params` collection

The converter, the trainer and `fam-generate` all read and write this layout, so a
checkpoint always says which architecture it belongs to.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from fam_jax.config import FamConfig

FORMAT = "fam-jax/1"
CONFIG_FILE = "fam_config.json"
PARAMS_DIR = "params"


def config_to_dict(cfg: FamConfig) -> dict[str, Any]:
  return {k: list(v) if isinstance(v, tuple) else v
          for k, v in dataclasses.asdict(cfg).items()}


def config_from_dict(fields: dict[str, Any]) -> FamConfig:
  known = {f.name for f in dataclasses.fields(FamConfig)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"unknown FamConfig fields {unknown} (written by a newer "
                     "fam-jax?)")
  return FamConfig(**fields)


def save_config(directory: str, cfg: FamConfig) -> None:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    json.dump({"format": FORMAT, "config": config_to_dict(cfg)}, f, indent=2,
              sort_keys=True)


def load_config(directory: str) -> FamConfig:
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {directory} is not a fam-jax "
                            "checkpoint")
  with open(path) as f:
    data = json.load(f)
  if data.get("format") != FORMAT:
    raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
  return config_from_dict(data["config"])


def save_checkpoint(directory: str, params: Any, cfg: FamConfig) -> None:
  """Writes params and their config to `directory` (which must not hold params)."""
  directory = os.path.abspath(directory)
  save_config(directory, cfg)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(directory, PARAMS_DIR), params)
  checkpointer.wait_until_finished()


def load_checkpoint(directory: str, *, dtype: Optional[Any] = None,
                    shardings: Optional[Any] = None):
  """Reads (params, cfg) from `directory`.

  Args:
    directory: a checkpoint directory written by save_checkpoint.
    dtype: cast floating parameters to this dtype while restoring.
    shardings: a params-shaped tree of jax.sharding.Sharding to restore onto
      (e.g. `sharding.param_shardings`); default: the first device.
  """
  directory = os.path.abspath(directory)
  cfg = load_config(directory)
  path = os.path.join(directory, PARAMS_DIR)
  checkpointer = ocp.StandardCheckpointer()
  stored = checkpointer.metadata(path).item_metadata.tree

  def target(meta, sharding=None):
    leaf_dtype = meta.dtype
    if dtype is not None and jax.numpy.issubdtype(leaf_dtype, jax.numpy.floating):
      leaf_dtype = dtype
    if sharding is None:
      sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(meta.shape, leaf_dtype, sharding=sharding)

  is_meta = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
  if shardings is None:
    abstract = jax.tree_util.tree_map(target, stored, is_leaf=is_meta)
  else:
    abstract = jax.tree_util.tree_map(target, stored, shardings, is_leaf=is_meta)
  return checkpointer.restore(path, abstract), cfg
