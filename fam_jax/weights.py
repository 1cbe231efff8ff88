"""FamLM's parameters: declared (the Flax side) and read back (the typed view).

Each Flax module here declares its parameters with logical axis names (t5x's
`param_with_axes`, which also fills the `params_axes` collection t5x and
`fam_jax.sharding` read) and returns them as a plain pytree. The computation lives
in pure functions (`layers.py`, `blockwise.py`) so that it can run inside
`jax.lax.scan` and be reused by the streaming path on the very same arrays.

`ModelWeights.from_params(params, cfg)` is the one way the rest of fam-jax (the
streaming path, LoRA, the CLIs, the converters, adapters to other frameworks)
reads a `params` tree, and `ModelWeights.to_params()` the one way it writes one.
The names in the tree are in `param_names.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct
from flax.linen import partitioning as nn_partitioning

from fam_jax import param_names as names
from fam_jax.config import FamConfig
from fam_jax.layers import Norm, Projection

param_with_axes = nn_partitioning.param_with_axes

@struct.dataclass
class LayerWeights:
  """Everything one decoder layer computes with; tokens and FAM share all of it."""

  attn_norm: Norm
  q: Projection  # [D, H, E]
  k: Projection  # [D, K, E]
  v: Projection  # [D, K, E]
  o: Projection  # [H, E, D]
  mlp_norm: Norm
  gate: Projection  # [D, mlp]
  up: Projection  # [D, mlp]
  down: Projection  # [mlp, D]

  def projections(self) -> dict[str, Projection]:
    """The seven projections by name (the names of their parameters)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Projection)}


def _fan_in_init(num_in_axes: int, rank: int):
  in_axis = tuple(range(num_in_axes))
  out_axis = tuple(range(num_in_axes, rank))
  return nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis)


class LinearWeights(nn.Module):
  """Declares a kernel [in..., out...] and, if enabled, its LoRA factors."""

  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  in_axes: tuple[str, ...]
  out_axes: tuple[str, ...]
  lora_rank: int
  lora_scale: float
  param_dtype: Any

  @nn.compact
  def __call__(self) -> Projection:
    n_in = len(self.in_shape)
    shape = self.in_shape + self.out_shape
    kernel = param_with_axes(
        names.KERNEL, _fan_in_init(n_in, len(shape)), shape, self.param_dtype,
        axes=self.in_axes + self.out_axes)
    lora_a = lora_b = None
    if self.lora_rank:
      a_shape = self.in_shape + (self.lora_rank,)
      lora_a = param_with_axes(
          names.LORA_A, _fan_in_init(n_in, len(a_shape)), a_shape, self.param_dtype,
          axes=self.in_axes + ("lora",))
      # B starts at zero, so a freshly adapted model computes the base model.
      lora_b = param_with_axes(
          names.LORA_B, nn.initializers.zeros, (self.lora_rank,) + self.out_shape,
          self.param_dtype, axes=("lora",) + self.out_axes)
    return Projection(kernel, lora_a, lora_b, num_in_axes=n_in,
                      lora_scale=self.lora_scale)


class NormWeights(nn.Module):
  cfg: FamConfig

  @nn.compact
  def __call__(self) -> Norm:
    cfg = self.cfg
    # Stored so that `norm_scale_offset + scale` is 1 at init.
    init = nn.initializers.constant(1.0 - cfg.norm_scale_offset)
    scale = param_with_axes(names.SCALE, init, (cfg.d_model,), cfg.weights_dtype,
                            axes=("embed",))
    bias = None
    if cfg.norm == "layernorm":
      bias = param_with_axes(names.BIAS, nn.initializers.zeros, (cfg.d_model,),
                             cfg.weights_dtype, axes=("embed",))
    return Norm(scale, bias)


def _linear(cfg: FamConfig, name: str, in_shape, out_shape, in_axes, out_axes):
  rank = cfg.lora_rank if name in cfg.lora_targets else 0
  return LinearWeights(tuple(in_shape), tuple(out_shape), tuple(in_axes),
                       tuple(out_axes), rank, cfg.lora_scale, cfg.weights_dtype,
                       name=name)


class AttentionWeights(nn.Module):
  cfg: FamConfig

  @nn.compact
  def __call__(self) -> dict[str, Projection]:
    cfg = self.cfg
    d, h, k, e = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    return dict(
        q=_linear(cfg, names.Q, [d], [h, e], ["embed"], ["heads", "kv"])(),
        k=_linear(cfg, names.K, [d], [k, e], ["embed"], ["kv_heads", "kv"])(),
        v=_linear(cfg, names.V, [d], [k, e], ["embed"], ["kv_heads", "kv"])(),
        o=_linear(cfg, names.O, [h, e], [d], ["heads", "kv"], ["embed"])(),
    )


class MlpWeights(nn.Module):
  cfg: FamConfig

  @nn.compact
  def __call__(self) -> dict[str, Projection]:
    cfg = self.cfg
    d, f = cfg.d_model, cfg.mlp_dim
    return dict(
        gate=_linear(cfg, names.GATE, [d], [f], ["embed"], ["mlp"])(),
        up=_linear(cfg, names.UP, [d], [f], ["embed"], ["mlp"])(),
        down=_linear(cfg, names.DOWN, [f], [d], ["mlp"], ["embed"])(),
    )


def declare_layer_weights(cfg: FamConfig) -> LayerWeights:
  """Declares one layer's parameters in the current Flax module; returns them."""
  attn = AttentionWeights(cfg, name=names.ATTENTION)()
  mlp = MlpWeights(cfg, name=names.MLP)()
  return LayerWeights(
      attn_norm=NormWeights(cfg, name=names.PRE_ATTENTION_NORM)(),
      mlp_norm=NormWeights(cfg, name=names.PRE_MLP_NORM)(),
      **attn, **mlp)


def embedding_init(cfg: FamConfig):
  return nn.initializers.normal(stddev=cfg.init_std)


# ---------------------------------------------------------------------------
# The typed view of a params tree.

# Projections whose input has two axes ([H, E] -> D); the others have one.
_TWO_INPUT_AXES = (names.O,)


@struct.dataclass
class ModelWeights:
  """Every parameter of a FamLM, typed, with the layers stacked.

  Attributes:
    embedding: [V, D] token embeddings (also the output projection when tied).
    final_norm: the norm before the output projection.
    layers: LayerWeights whose every leaf is stacked [L, ...].
    num_layers: L.
    lm_head: [D, V] the untied output projection; None where params have none.
    summarization_embeddings: [F, D] FAM's learned initial value (appendix
      B.1); None where params have none.
    scanned: the layout `to_params` writes by default: the one read, `layers`
      stacked [L, ...] (True) or `layers_0`, `layers_1`, ... (False).
  """

  embedding: Any
  final_norm: Norm
  layers: LayerWeights
  num_layers: int = struct.field(pytree_node=False)
  lm_head: Any = None
  summarization_embeddings: Any = None
  scanned: bool = struct.field(pytree_node=False, default=True)

  @classmethod
  def from_params(cls, params: Mapping[str, Any],
                  cfg: FamConfig) -> "ModelWeights":
    """The view of a model's `params` collection, checked against `cfg`.

    Reads scanned and unscanned layers, inside jit (tracers) and outside;
    unscanned layers are stacked, a copy outside jit.

    Raises:
      ValueError: a parameter `cfg` needs is missing (named by its path), or
        the number of layers is not cfg.num_layers.
    """
    w = _read(params, cfg.num_layers, cfg.lora_scale)
    if not cfg.tie_embeddings and w.lm_head is None:
      raise ValueError(f"the params have no {names.LM_HEAD}/{names.KERNEL}, "
                       "which cfg.tie_embeddings=False needs")
    if cfg.num_fam_tokens and w.summarization_embeddings is None:
      raise ValueError(
          f"the params have no {names.SUMMARIZATION_EMBEDDINGS}, so they cannot "
          "run with attention='fam'; use attention='bswa' or 'full'")
    return w

  @classmethod
  def from_tree(cls, tree: Mapping[str, Any]) -> "ModelWeights":
    """The view of any tree shaped like params (their shapes, gradients,
    optimizer moments), read without a config: the layer count comes from the
    tree and the LoRA scale is 0. Not for computing: use from_params."""
    return _read(tree, None, 0.0)

  def layer(self, index: int) -> LayerWeights:
    """Layer `index` alone (leaves without the [L] axis)."""
    return jax.tree_util.tree_map(lambda x: x[index], self.layers)

  def to_params(self, scanned: Optional[bool] = None) -> dict[str, Any]:
    """The params tree of this view, in the layout read (or `scanned`).

    Leaves without a shape (a mask's booleans) go to every layer alike.
    """
    scanned = self.scanned if scanned is None else scanned
    params = {names.TOKEN_EMBEDDER: {names.EMBEDDING: self.embedding},
              names.FINAL_NORM: _norm_params(self.final_norm)}
    layers = _layer_params(self.layers)
    if scanned:
      params[names.LAYERS] = layers
    else:
      for i in range(self.num_layers):
        params[names.layer_name(i)] = jax.tree_util.tree_map(
            lambda x, i=i: x[i] if hasattr(x, "shape") else x, layers)
    if self.lm_head is not None:
      params[names.LM_HEAD] = {names.KERNEL: self.lm_head}
    if self.summarization_embeddings is not None:
      params[names.SUMMARIZATION_EMBEDDINGS] = self.summarization_embeddings
    return params


def check_params(params: Mapping[str, Any], cfg: FamConfig) -> None:
  """Raises ValueError if `params` lack what `cfg` needs (no computation)."""
  jax.eval_shape(lambda p: ModelWeights.from_params(p, cfg), params)


def _child(tree: Mapping[str, Any], key: str, where: str) -> Any:
  """tree[key], or a ValueError naming the path `where/key`."""
  if key not in tree:
    raise ValueError(f"the params have no {f'{where}/' if where else ''}{key}")
  return tree[key]


def _read_layer(tree: Mapping[str, Any], lora_scale: float,
                where: str) -> LayerWeights:
  def norm(name):
    return _read_norm(_child(tree, name, where), f"{where}/{name}")

  def projection(name):
    group = _group(name)
    p = _child(_child(tree, group, where), name, f"{where}/{group}")
    adapted = names.LORA_A in p
    return Projection(_child(p, names.KERNEL, f"{where}/{group}/{name}"),
                      p.get(names.LORA_A), p.get(names.LORA_B),
                      num_in_axes=2 if name in _TWO_INPUT_AXES else 1,
                      lora_scale=lora_scale if adapted else 0.0)

  return LayerWeights(attn_norm=norm(names.PRE_ATTENTION_NORM),
                      mlp_norm=norm(names.PRE_MLP_NORM),
                      **{name: projection(name) for name in names.PROJECTIONS})


def _read(tree: Mapping[str, Any], num_layers: Optional[int],
          lora_scale: float) -> ModelWeights:
  scanned = names.LAYERS in tree
  if scanned:
    layers = _read_layer(tree[names.LAYERS], lora_scale, names.LAYERS)
    count = layers.attn_norm.scale.shape[0]
  else:
    count = num_layers
    if count is None:
      count = 0
      while names.layer_name(count) in tree:
        count += 1
    unstacked = [_read_layer(_child(tree, names.layer_name(i), ""), lora_scale,
                             names.layer_name(i)) for i in range(count)]
    if names.layer_name(count) in tree:
      raise ValueError(f"the params have more layers than num_layers={count}")
    layers = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *unstacked)
  if num_layers is not None and count != num_layers:
    raise ValueError(f"the params have {count} layers; the config has "
                     f"num_layers={num_layers}")
  lm_head = tree.get(names.LM_HEAD)
  return ModelWeights(
      embedding=_child(_child(tree, names.TOKEN_EMBEDDER, ""), names.EMBEDDING,
                       names.TOKEN_EMBEDDER),
      final_norm=_read_norm(_child(tree, names.FINAL_NORM, ""),
                            names.FINAL_NORM),
      layers=layers, num_layers=count,
      lm_head=None if lm_head is None else _child(lm_head, names.KERNEL,
                                                  names.LM_HEAD),
      summarization_embeddings=tree.get(names.SUMMARIZATION_EMBEDDINGS),
      scanned=scanned)


def _read_norm(tree: Mapping[str, Any], where: str) -> Norm:
  return Norm(_child(tree, names.SCALE, where), tree.get(names.BIAS))


def _norm_params(norm: Norm) -> dict[str, Any]:
  tree = {names.SCALE: norm.scale}
  if norm.bias is not None:
    tree[names.BIAS] = norm.bias
  return tree


def _layer_params(w: LayerWeights) -> dict[str, Any]:
  tree = {names.PRE_ATTENTION_NORM: _norm_params(w.attn_norm),
          names.PRE_MLP_NORM: _norm_params(w.mlp_norm),
          names.ATTENTION: {}, names.MLP: {}}
  for name, p in w.projections().items():
    leaves = {names.KERNEL: p.kernel}
    if p.lora_a is not None:
      leaves.update({names.LORA_A: p.lora_a, names.LORA_B: p.lora_b})
    tree[_group(name)][name] = leaves
  return tree


def _group(projection: str) -> str:
  """The group a projection's parameters sit in: attention or mlp."""
  return (names.ATTENTION if projection in names.ATTENTION_PROJECTIONS
          else names.MLP)
