"""Logical axis names -> device mesh: how parameters and activations are sharded.

Parameters carry logical axis names (the `params_axes` collection `FamLM.init`
returns; t5x reads the same collection). The rules below map them onto a mesh with a
`data` and a `model` axis, as t5x's defaults do, plus the names fam-jax adds:
`kv_heads` (replicated: a handful of key/value heads rarely divides the model axis,
and multi-query has one), `fam` (FAM tokens), `lora` (adapter rank), `layers`
(the stacked axis of scanned layers).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax
import jax
from flax import linen as nn
from flax.linen import partitioning as nn_partitioning

LogicalRules = Sequence[tuple[str, Any]]

LOGICAL_AXIS_RULES: LogicalRules = (
    ("batch", "data"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("kv_heads", None),
    ("kv", None),
    ("embed", None),
    ("length", None),
    ("layers", None),
    ("fam", None),
    ("lora", None),
)


def logical_partition_specs(params_axes: Mapping[str, Any]):
  """The `params_axes` collection -> a params-shaped tree of logical PartitionSpecs."""
  return flax.core.unfreeze(nn_partitioning.get_axis_names(params_axes))


def param_shardings(params_axes: Mapping[str, Any], mesh: jax.sharding.Mesh,
                    rules: LogicalRules = LOGICAL_AXIS_RULES):
  """A params-shaped tree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_partition_specs(params_axes), mesh,
                                     rules)


def make_mesh(model_parallel: int = 1, devices=None) -> jax.sharding.Mesh:
  """A ('data', 'model') mesh; devices beyond model_parallel go to `data`.

  The axes are `Auto` (GSPMD propagation, as t5x uses): the model annotates
  activations with logical constraints and leaves the rest to the compiler.
  """
  devices = jax.devices() if devices is None else devices
  if model_parallel < 1 or len(devices) % model_parallel:
    raise ValueError(f"model_parallel={model_parallel} must be >= 1 and divide "
                     f"the {len(devices)} devices")
  shape = (len(devices) // model_parallel, model_parallel)
  return jax.make_mesh(shape, ("data", "model"), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
