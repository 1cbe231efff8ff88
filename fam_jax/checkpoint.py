"""Model checkpoints: FamLM parameters (orbax) together with the FamConfig they fit.

Layout of a checkpoint directory:

    <dir>/fam_config.json   {"format": "fam-jax/1", "config": {FamConfig fields},
                             "prompt_prefix": [ids]}   (the last: trained models)
    <dir>/params/           orbax StandardCheckpointer tree of the `params` collection

The converter, the trainer and `fam-generate` all read and write this layout, so a
checkpoint always says which architecture it belongs to. `load_checkpoint` also
reads a fam-train run directory (`<dir>/fam_config.json` beside
`<dir>/checkpoints/<step>/state/`, see `fam_jax.train.checkpoints`): the params of
its newest step. `save_checkpoint` writes
it as one step (`atomic.writing`): a reader, or a process killed mid-write, never
sees a config without its parameters.

`prompt_prefix` holds the ids every row the model was trained on started with
(fam-train's and t5x's rows start with the decoder BOS that seqio's converters
shift in; converted models have none): fam-generate feeds them before a
prompt, as training presented its rows. A model trained on rows that start
with 0 and asked without it answers one position off (README, PassKey).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from fam_jax import atomic
from fam_jax.config import FamConfig
from fam_jax.jsonfile import read_json

FORMAT = "fam-jax/1"
CONFIG_FILE = "fam_config.json"
PARAMS_DIR = "params"
# A fam-train run directory keeps TrainStates under <dir>/RUN_CHECKPOINTS_DIR/
# <step>/RUN_STATE_DIR, the params in the state's "params" entry.
RUN_CHECKPOINTS_DIR = "checkpoints"
RUN_STATE_DIR = "state"


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


def orbax_checkpointer() -> ocp.Checkpointer:
  """For saving. Synchronous: a save has finished (or failed) when it returns,
  so no background thread is left writing when the process is interrupted.
  (Reads use ocp.StandardCheckpointer: after a failed read, the synchronous
  one's pending tensorstore callbacks print tracebacks.)

  It involves this process alone: a fam-jax checkpoint is written by one
  process (fam-convert; fam-train's export, by process 0), and orbax by default
  waits at barriers for every process of a multi-process run."""
  me = jax.process_index()
  alone = ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me},
      barrier_sync_key_prefix=f"fam_jax_checkpoint_{me}")
  return ocp.Checkpointer(
      ocp.StandardCheckpointHandler(multiprocessing_options=alone),
      multiprocessing_options=alone)


def restore_arrays(path: str, what: str, target: Any = None,
                   entry: Optional[str] = None) -> Any:
  """orbax restore of `path` whose errors say what is damaged in one line
  (tensorstore's messages run to a hundred lines).

  With `entry`, restores only that entry of the saved dict (`target` is its
  target), e.g. the params of a training state.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} not found: {what} are missing (an "
                            "incomplete copy?)")
  try:
    with _quiet_absl():
      if entry is None:
        return ocp.StandardCheckpointer().restore(path, target)
      item = {entry: target}
      return ocp.PyTreeCheckpointer().restore(path, args=ocp.args.PyTreeRestore(
          item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(
              item), partial_restore=True))[entry]
  except Exception as e:  # pylint: disable=broad-except
    raise _damaged(path, what, e) from e


def _damaged(path: str, what: str, error: Exception) -> ValueError:
  detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
  if len(detail) > 120:
    detail = detail[:117] + "..."
  return ValueError(f"{path}: cannot read {what}: the files are damaged or "
                    f"incomplete ({detail})")


@contextlib.contextmanager
def _quiet_absl():
  """orbax logs a warning (through absl) before failing on a damaged
  checkpoint; the error that follows says it all."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def save_config(directory: str, cfg: FamConfig, *,
                prompt_prefix: Sequence[int] = ()) -> None:
  os.makedirs(directory, exist_ok=True)
  data = {"format": FORMAT, "config": config_to_dict(cfg)}
  if prompt_prefix:
    data["prompt_prefix"] = [int(i) for i in prompt_prefix]
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    json.dump(data, f, indent=2, sort_keys=True)


def _read_config_file(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {directory} is not a fam-jax "
                            "checkpoint")
  data = read_json(path)
  if data.get("format") != FORMAT:
    raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
  return data


def load_config(directory: str) -> FamConfig:
  return config_from_dict(_read_config_file(directory)["config"])


def load_prompt_prefix(directory: str) -> list[int]:
  """The ids the checkpoint's training rows started with ([] if none)."""
  data = _read_config_file(directory)
  prefix = data.get("prompt_prefix", [])
  if not (isinstance(prefix, list)
          and all(isinstance(i, int) and i >= 0 for i in prefix)):
    raise ValueError(f"{os.path.join(directory, CONFIG_FILE)}: prompt_prefix "
                     f"must be a list of token ids, got {prefix!r}")
  return prefix


def save_checkpoint(directory: str, params: Any, cfg: FamConfig, *,
                    prompt_prefix: Sequence[int] = (),
                    overwrite: bool = False) -> None:
  """Writes params and their config to `directory` in one step.

  Args:
    directory: absent or empty, or (with overwrite) a checkpoint to replace.
    params: the `params` collection.
    cfg: its config.
    prompt_prefix: the ids every training row started with (module doc).
    overwrite: replace a checkpoint already in `directory`.

  Raises:
    atomic.DestinationExists: `directory` holds a checkpoint and not overwrite,
      or holds something else.
  """
  with atomic.writing(directory, overwrite=overwrite, marker=CONFIG_FILE,
                      kind="a fam-jax checkpoint") as tmp:
    write_checkpoint(tmp, params, cfg, prompt_prefix=prompt_prefix)


def write_checkpoint(directory: str, params: Any, cfg: FamConfig, *,
                     prompt_prefix: Sequence[int] = ()) -> None:
  """Writes params and config into an empty `directory`, file by file: wrap it
  in `atomic.writing` (as save_checkpoint does, or fam-convert with its other
  files) to make it one step."""
  save_config(directory, cfg, prompt_prefix=prompt_prefix)
  atomic.kill_point("config-written")
  orbax_checkpointer().save(os.path.join(os.path.abspath(directory), PARAMS_DIR),
                            params)
  atomic.kill_point("params-written")


def load_checkpoint(directory: str, *, dtype: Optional[Any] = None,
                    shardings: Optional[Any] = None):
  """Reads (params, cfg) from `directory`.

  Args:
    directory: a checkpoint directory written by save_checkpoint, or a fam-train
      run directory (its newest checkpoint's params).
    dtype: cast floating parameters to this dtype while restoring.
    shardings: a params-shaped tree of jax.sharding.Sharding to restore onto
      (e.g. `sharding.param_shardings`); default: the first device.
  """
  directory = os.path.abspath(directory)
  cfg = load_config(directory)
  path, entry = os.path.join(directory, PARAMS_DIR), None
  if not os.path.isdir(path):
    step = newest_run_step(directory)
    if step is None:
      raise FileNotFoundError(f"{path} not found: {directory} has a config but "
                              "no parameters")
    path = os.path.join(directory, RUN_CHECKPOINTS_DIR, str(step), RUN_STATE_DIR)
    entry = "params"
  try:
    with _quiet_absl():
      metadata = ocp.StandardCheckpointer().metadata(path).item_metadata
  except Exception as e:  # pylint: disable=broad-except
    raise _damaged(path, "the parameters", e) from e
  if metadata is None:
    raise ValueError(f"{path}: cannot read the parameters: their metadata is "
                     "missing or damaged")
  stored = metadata.tree if entry is None else metadata.tree[entry]

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
  return restore_arrays(path, "the parameters", abstract, entry), cfg


def newest_run_step(directory: str) -> Optional[int]:
  """The newest complete checkpoint step of a fam-train run directory, or None.

  orbax gives a step directory its final name (the step number) only once it is
  complete; a write cut short keeps a temporary name, which this ignores.
  """
  runs = os.path.join(os.path.abspath(directory), RUN_CHECKPOINTS_DIR)
  if not os.path.isdir(runs):
    return None
  steps = [int(name) for name in os.listdir(runs) if name.isdigit()]
  return max(steps) if steps else None


def params_fingerprint(params: Any, samples: int = 64) -> str:
  """A short hash that tells one set of weights from another.

  It covers every leaf's path, shape and dtype, and `samples` elements of each
  leaf at evenly spaced flat indices (the first and last included), hashed as
  stored. No arithmetic is involved, so the same weights give the same
  fingerprint on any device, and it costs reading `samples` numbers per leaf.
  Weights that differ only between the sampled elements (one edited row of a
  large table) share a fingerprint: it tells models and fine-tunes apart, it is
  no checksum. Scanned and unscanned layouts of the same weights differ.
  """
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  leaves = [leaf for _, leaf in flat]
  picked = _sample_leaves(leaves, samples)
  digest = hashlib.sha256()
  for (path, leaf), values in zip(flat, picked):
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    digest.update(f"{name}:{tuple(leaf.shape)}:{leaf.dtype};".encode())
    digest.update(np.asarray(values).tobytes())
  return digest.hexdigest()[:16]


def _sample_leaves(leaves: list, samples: int) -> list:
  """The sampled elements of every leaf, in one transfer per leaf."""

  def pick(leaf):
    size = int(np.prod(leaf.shape))
    index = np.unique(np.linspace(0, max(size - 1, 0), min(samples, size))
                      .round().astype(np.int64))
    return leaf.reshape(-1)[index]

  on_host = [isinstance(x, np.ndarray) for x in leaves]
  device = [x for x, host in zip(leaves, on_host) if not host]
  device_picked = iter(jax.device_get(jax.jit(
      lambda xs: [pick(x) for x in xs])(device)) if device else [])
  return [pick(x) if host else next(device_picked)
          for x, host in zip(leaves, on_host)]
