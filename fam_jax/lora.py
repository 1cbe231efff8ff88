"""LoRA: which parameters train, and folding the adapters into the base weights.

The paper fine-tunes with rank-64 LoRA on attention and feed-forward projections and
merges the adapters for inference. Adapters are declared next to their kernel
(`weights.LinearWeights`): `.../kernel`, `.../lora_a` [in..., R], `.../lora_b`
[R, out...], and the layer computes `x @ kernel + scale * (x @ lora_a) @ lora_b`.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import traverse_util

from fam_jax.config import FamConfig

# Parameters that exist only because of FAM; they start untrained, so they are
# trained together with the adapters (the base model stays frozen).
FAM_PARAMETERS = ("summarization_embeddings",)


def merge_lora(params: Mapping[str, Any],
               cfg: FamConfig) -> tuple[dict[str, Any], FamConfig]:
  """Folds every adapter into its kernel: kernel += scale * lora_a @ lora_b.

  Args:
    params: the model's `params` collection (scanned or unscanned layers).
    cfg: the config the params belong to (lora_rank > 0).

  Returns:
    (params without lora_a/lora_b, cfg with lora_rank=0), which compute the same
    logits as the adapted model.
  """
  if not cfg.lora_rank:
    raise ValueError("merge_lora: cfg.lora_rank is 0, there is nothing to merge")
  flat = traverse_util.flatten_dict(dict(params))
  merged = {}
  for path, value in flat.items():
    if path[-1] in ("lora_a", "lora_b"):
      continue
    if path[-1] == "kernel" and path[:-1] + ("lora_a",) in flat:
      a = flat[path[:-1] + ("lora_a",)].astype(jnp.float32)
      b = flat[path[:-1] + ("lora_b",)].astype(jnp.float32)
      stacked = cfg.scan_layers and path[0] == "layers"
      outer = jax.vmap(_outer) if stacked else _outer
      value = (value.astype(jnp.float32) + cfg.lora_scale * outer(a, b)).astype(
          value.dtype)
    merged[path] = value
  return traverse_util.unflatten_dict(merged), cfg.replace(lora_rank=0)


def _outer(a: jax.Array, b: jax.Array) -> jax.Array:
  """[in..., R] x [R, out...] -> [in..., out...]."""
  return jnp.tensordot(a, b, axes=1)


def trainable_mask(params: Mapping[str, Any]) -> dict[str, Any]:
  """True for the parameters LoRA fine-tuning updates: adapters and FAM's own.

  Use with `optax.masked` / `optax.multi_transform` to freeze the base model.
  """
  flat = traverse_util.flatten_dict(dict(params))
  return traverse_util.unflatten_dict({
      path: path[-1] in ("lora_a", "lora_b") or path[0] in FAM_PARAMETERS
      for path in flat
  })
