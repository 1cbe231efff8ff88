"""Logical axis rules of FamLM's parameter and activation names for t5x.

t5x's mesh has two axes, `data` and `model`. Its standard rules name batch, vocab,
embed, mlp, heads, kv, joined_kv and length; FamLM also uses `kv_heads` (key/value
heads: a few, often one, so replicated as in `fam_jax.sharding`), `fam` (FAM
tokens), `lora` (adapter rank) and `layers` (the stacked axis of scanned layers),
all replicated. `parameter_partitioning_dims=2` additionally splits `embed` of
every weight over `data` (t5x's 2-D parameter partitioning, the FSDP-like layout
fam-train's `mesh_fsdp` gives): what the 8B and 24B runs use.
"""

from __future__ import annotations

import gin
from t5x import partitioning as t5x_partitioning

FAM_AXES = (("kv_heads", None), ("fam", None), ("lora", None), ("layers", None))


@gin.configurable
def logical_axis_rules(activation_partitioning_dims: int = 1,
                       parameter_partitioning_dims: int = 1):
  """t5x's standard rules followed by FamLM's own names."""
  rules = list(t5x_partitioning.standard_logical_axis_rules(
      activation_partitioning_dims=activation_partitioning_dims,
      parameter_partitioning_dims=parameter_partitioning_dims))
  named = {name for name, _ in rules}
  return tuple(rules + [rule for rule in FAM_AXES if rule[0] not in named])
