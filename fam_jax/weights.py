"""Parameter declarations: the Flax side of a decoder layer.

Each module here declares its parameters with logical axis names (t5x's
`param_with_axes`, which also fills the `params_axes` collection t5x and
`fam_jax.sharding` read) and returns them as a plain pytree. The computation lives
in pure functions (`layers.py`, `blockwise.py`) so that it can run inside
`jax.lax.scan` and be reused by the streaming path on the very same arrays.

Parameter tree of one layer:
  pre_attention_norm/{scale,bias?}  attention/{q,k,v,o}/{kernel,lora_a?,lora_b?}
  pre_mlp_norm/{scale,bias?}        mlp/{gate,up,down}/{kernel,lora_a?,lora_b?}
"""

from __future__ import annotations

from typing import Any, Mapping

from flax import linen as nn
from flax import struct
from flax.linen import partitioning as nn_partitioning

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
        "kernel", _fan_in_init(n_in, len(shape)), shape, self.param_dtype,
        axes=self.in_axes + self.out_axes)
    lora_a = lora_b = None
    if self.lora_rank:
      a_shape = self.in_shape + (self.lora_rank,)
      lora_a = param_with_axes(
          "lora_a", _fan_in_init(n_in, len(a_shape)), a_shape, self.param_dtype,
          axes=self.in_axes + ("lora",))
      # B starts at zero, so a freshly adapted model computes the base model.
      lora_b = param_with_axes(
          "lora_b", nn.initializers.zeros, (self.lora_rank,) + self.out_shape,
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
    scale = param_with_axes("scale", init, (cfg.d_model,), cfg.weights_dtype,
                            axes=("embed",))
    bias = None
    if cfg.norm == "layernorm":
      bias = param_with_axes("bias", nn.initializers.zeros, (cfg.d_model,),
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
        q=_linear(cfg, "q", [d], [h, e], ["embed"], ["heads", "kv"])(),
        k=_linear(cfg, "k", [d], [k, e], ["embed"], ["kv_heads", "kv"])(),
        v=_linear(cfg, "v", [d], [k, e], ["embed"], ["kv_heads", "kv"])(),
        o=_linear(cfg, "o", [h, e], [d], ["heads", "kv"], ["embed"])(),
    )


class MlpWeights(nn.Module):
  cfg: FamConfig

  @nn.compact
  def __call__(self) -> dict[str, Projection]:
    cfg = self.cfg
    d, f = cfg.d_model, cfg.mlp_dim
    return dict(
        gate=_linear(cfg, "gate", [d], [f], ["embed"], ["mlp"])(),
        up=_linear(cfg, "up", [d], [f], ["embed"], ["mlp"])(),
        down=_linear(cfg, "down", [f], [d], ["mlp"], ["embed"])(),
    )


def declare_layer_weights(cfg: FamConfig) -> LayerWeights:
  """Declares one layer's parameters in the current Flax module; returns them."""
  attn = AttentionWeights(cfg, name="attention")()
  mlp = MlpWeights(cfg, name="mlp")()
  return LayerWeights(
      attn_norm=NormWeights(cfg, name="pre_attention_norm")(),
      mlp_norm=NormWeights(cfg, name="pre_mlp_norm")(),
      **attn, **mlp)


def layer_weights_from_params(layer_params: Mapping[str, Any],
                              cfg: FamConfig) -> LayerWeights:
  """Builds LayerWeights from a layer's parameter subtree, without Flax.

  Works leaf-wise, so it also accepts the stacked [L, ...] tree of scanned layers.
  """

  def proj(group, name, num_in_axes):
    p = layer_params[group][name]
    return Projection(p["kernel"], p.get("lora_a"), p.get("lora_b"),
                      num_in_axes=num_in_axes,
                      lora_scale=cfg.lora_scale if "lora_a" in p else 0.0)

  def norm(name):
    p = layer_params[name]
    return Norm(p["scale"], p.get("bias"))

  return LayerWeights(
      attn_norm=norm("pre_attention_norm"),
      q=proj("attention", "q", 1), k=proj("attention", "k", 1),
      v=proj("attention", "v", 1), o=proj("attention", "o", 2),
      mlp_norm=norm("pre_mlp_norm"),
      gate=proj("mlp", "gate", 1), up=proj("mlp", "up", 1),
      down=proj("mlp", "down", 1))


def embedding_init(cfg: FamConfig):
  return nn.initializers.normal(stddev=cfg.init_std)
