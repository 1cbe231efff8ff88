"""LoRA: which parameters train, and folding the adapters into the base weights.

The paper fine-tunes with rank-64 LoRA on attention and feed-forward projections and
merges the adapters for inference. Adapters are declared next to their kernel
(`weights.LinearWeights`): a projection holds `lora_a` [in..., R] and `lora_b`
[R, out...] beside its kernel, and the layer computes
`x @ kernel + scale * (x @ lora_a) @ lora_b`. Both functions here read and write
params through `weights.ModelWeights`.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from fam_jax.config import FamConfig
from fam_jax.layers import Projection
from fam_jax.weights import ModelWeights


def merge_lora(params: Mapping[str, Any],
               cfg: FamConfig) -> tuple[dict[str, Any], FamConfig]:
  """Folds every adapter into its kernel: kernel += scale * lora_a @ lora_b.

  Args:
    params: the model's `params` collection (scanned or unscanned layers).
    cfg: the config the params belong to (lora_rank > 0).

  Returns:
    (params without lora_a/lora_b, in the layout given, and cfg with
    lora_rank=0), which compute the same logits as the adapted model.
  """
  if not cfg.lora_rank:
    raise ValueError("merge_lora: cfg.lora_rank is 0, there is nothing to merge")
  w = ModelWeights.from_params(params, cfg)
  merged = {name: _merged(p) for name, p in w.layers.projections().items()}
  w = w.replace(layers=w.layers.replace(**merged))
  return w.to_params(), cfg.replace(lora_rank=0)


def _merged(p: Projection) -> Projection:
  """A stacked [L, ...] projection with its adapter folded in."""
  if p.lora_a is None:
    return p
  update = jax.vmap(_outer)(p.lora_a.astype(jnp.float32),
                            p.lora_b.astype(jnp.float32))
  kernel = p.kernel.astype(jnp.float32) + p.lora_scale * update
  return Projection(kernel.astype(p.kernel.dtype), num_in_axes=p.num_in_axes)


def _outer(a: jax.Array, b: jax.Array) -> jax.Array:
  """[in..., R] x [R, out...] -> [in..., out...]."""
  return jnp.tensordot(a, b, axes=1)


def trainable_mask(params: Mapping[str, Any]) -> dict[str, Any]:
  """True for the parameters LoRA fine-tuning updates: the adapters and FAM's
  own summarization embeddings (they start untrained); the base model stays
  frozen.

  Use with `optax.masked` / `optax.multi_transform`. The mask has the layout of
  `params` (scanned or not), with a Python bool per leaf.
  """
  shapes = jax.eval_shape(ModelWeights.from_tree, params)
  mask = jax.tree_util.tree_map(lambda _: False, shapes)
  adapters = {name: p.replace(lora_a=True, lora_b=True)
              for name, p in mask.layers.projections().items()
              if p.lora_a is not None}
  mask = mask.replace(layers=mask.layers.replace(**adapters))
  if mask.summarization_embeddings is not None:
    mask = mask.replace(summarization_embeddings=True)
  return mask.to_params()
