"""Logical axis names -> device mesh: how parameters, activations and batches shard.

Parameters carry logical axis names (the `params_axes` collection `FamLM.init`
returns; t5x reads the same collection). The rules below map them onto a mesh with
three axes:

- `data`: pure data parallelism (each replica holds the whole model);
- `fsdp`: data parallelism whose replicas also split the weights along their
  `embed` axis (ZeRO-3 / fully sharded data parallel);
- `tensor`: tensor (model) parallelism over heads, feed-forward width and vocabulary.

The batch is split over `data` × `fsdp`. Rules are in order of precedence and a
mesh axis is used at most once per array (flax's resolution), so an activation
[batch, length, embed] takes `fsdp` for its batch and keeps `embed` whole, while a
weight [embed, heads, kv] is split (fsdp, tensor, -). fam-jax's own names:
`kv_heads` (replicated: a handful of key/value heads rarely divides the tensor
axis, and multi-query has one), `fam` (FAM tokens), `lora` (adapter rank),
`layers` (the stacked axis of scanned layers).

A weight dimension that the mesh axes assigned to it do not divide (SmolLM2's 9
heads on tensor=2) stays whole instead: `param_shardings` says which.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Optional, Sequence

import flax
import jax
from flax import linen as nn
from flax.linen import partitioning as nn_partitioning
from jax.sharding import NamedSharding, PartitionSpec

LogicalRules = Sequence[tuple[str, Any]]

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_AXIS_RULES: LogicalRules = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("joined_kv", "tensor"),
    ("embed", "fsdp"),
    ("kv_heads", None),
    ("kv", None),
    ("length", None),
    ("layers", None),
    ("fam", None),
    ("lora", None),
)


def logical_partition_specs(params_axes: Mapping[str, Any]):
  """The `params_axes` collection -> a params-shaped tree of logical PartitionSpecs."""
  return flax.core.unfreeze(nn_partitioning.get_axis_names(params_axes))


def _divisible_spec(spec: PartitionSpec, shape: Sequence[int],
                    mesh: jax.sharding.Mesh) -> PartitionSpec:
  """`spec` with every dimension the mesh does not divide left whole."""
  out = []
  for size, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    parts = math.prod(mesh.shape[name] for name in names)
    out.append(axes if size % parts == 0 else None)
  return PartitionSpec(*out)


def param_shardings(params_axes: Mapping[str, Any], mesh: jax.sharding.Mesh,
                    rules: LogicalRules = LOGICAL_AXIS_RULES,
                    shapes: Optional[Any] = None):
  """A params-shaped tree of NamedShardings on `mesh`.

  Args:
    params_axes: the `params_axes` collection of `FamLM.init`.
    mesh: the device mesh.
    rules: logical axis rules.
    shapes: the params (or ShapeDtypeStructs); where given, a dimension that its
      mesh axes do not divide is replicated (logged) instead of failing later.
  """
  logical = logical_partition_specs(params_axes)
  is_spec = lambda x: isinstance(x, PartitionSpec)
  specs = jax.tree_util.tree_map(lambda s: nn.logical_to_mesh_axes(s, rules),
                                 logical, is_leaf=is_spec)
  if shapes is not None:
    def fit(path, spec, leaf):
      fitted = _divisible_spec(spec, leaf.shape, mesh)
      if fitted != spec:
        logging.info("%s %s: mesh %s does not divide %s; using %s",
                     jax.tree_util.keystr(path), leaf.shape, dict(mesh.shape),
                     spec, fitted)
      return fitted
    specs = jax.tree_util.tree_map_with_path(fit, specs, shapes, is_leaf=is_spec)
  return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s), specs,
                                is_leaf=is_spec)


def batch_sharding(mesh: jax.sharding.Mesh, batch_axis: int = 0,
                   ndim: int = 2) -> NamedSharding:
  """Sharding of an array whose `batch_axis` is the batch, split over data×fsdp."""
  spec = [None] * ndim
  spec[batch_axis] = BATCH_AXES
  return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all devices).

  Args:
    data: size of the data axis; -1 takes the devices left by fsdp × tensor.
    fsdp: size of the fully sharded data axis.
    tensor: size of the tensor-parallel axis.
    devices: the devices, default `jax.devices()` (every process's).

  The axes are `Auto` (GSPMD propagation, as t5x uses): the model annotates
  activations with logical constraints and leaves the rest to the compiler.
  """
  devices = jax.devices() if devices is None else list(devices)
  for name, value in (("fsdp", fsdp), ("tensor", tensor)):
    if not (isinstance(value, int) and value >= 1):
      raise ValueError(f"mesh {name}={value!r}: must be an integer >= 1")
  if data == -1:
    if len(devices) % (fsdp * tensor):
      raise ValueError(f"mesh fsdp={fsdp} × tensor={tensor} does not divide the "
                       f"{len(devices)} devices")
    data = len(devices) // (fsdp * tensor)
  if not (isinstance(data, int) and data >= 1):
    raise ValueError(f"mesh data={data!r}: must be an integer >= 1 or -1 (the "
                     "devices left by fsdp × tensor)")
  if data * fsdp * tensor != len(devices):
    raise ValueError(f"mesh data={data} × fsdp={fsdp} × tensor={tensor} = "
                     f"{data * fsdp * tensor} devices, but there are "
                     f"{len(devices)}")
  return jax.make_mesh((data, fsdp, tensor), MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)


def batch_parallelism(mesh: jax.sharding.Mesh) -> int:
  """How many ways the batch is split (data × fsdp)."""
  return mesh.shape["data"] * mesh.shape["fsdp"]
