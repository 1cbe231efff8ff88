"""Hugging Face Llama/Gemma tensors and config -> FamLM parameters and FamConfig.

This is the one table of the conversion; the safetensors and GGUF readers only
supply tensors under their Hugging Face names (`TensorSource`). The result is a
`weights.ModelWeights` (layers stacked), written out as FamLM params by its
`to_params`:

    model.embed_tokens.weight                    [V, D]    embedding
    model.layers.{i}.input_layernorm.weight      [D]       layers.attn_norm.scale
    model.layers.{i}.self_attn.q_proj.weight     [H·E, D]  layers.q.kernel [D, H, E]
    model.layers.{i}.self_attn.k_proj.weight     [K·E, D]  layers.k.kernel [D, K, E]
    model.layers.{i}.self_attn.v_proj.weight     [K·E, D]  layers.v.kernel [D, K, E]
    model.layers.{i}.self_attn.o_proj.weight     [D, H·E]  layers.o.kernel [H, E, D]
    model.layers.{i}.post_attention_layernorm.weight [D]   layers.mlp_norm.scale
    model.layers.{i}.mlp.gate_proj.weight        [M, D]    layers.gate.kernel [D, M]
    model.layers.{i}.mlp.up_proj.weight          [M, D]    layers.up.kernel [D, M]
    model.layers.{i}.mlp.down_proj.weight        [D, M]    layers.down.kernel [M, D]
    model.norm.weight                            [D]       final_norm.scale
    lm_head.weight                               [V, D]    lm_head [D, V] (untied)

A Hugging Face linear weight is [out, in]; ours is [in axes..., out axes...], so
every kernel is `weight.T.reshape(ours)`. Both families use rotate-half RoPE, as
FamLM does, so no permutation is needed. Gemma's norms compute `x·(1 + w)` and
store `w` (FamConfig.norm_scale_offset = 1) and its embeddings are scaled by
sqrt(d_model) (FamConfig.scale_embeddings).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fam_jax.config import FamConfig
from fam_jax.layers import Norm, Projection
from fam_jax.model import FamLM
from fam_jax.weights import LayerWeights, ModelWeights

FAMILIES = ("llama", "gemma")
FAM_INITS = ("bos", "vocab", "random")

# The Hugging Face tensor of each layer weight, laid out as the weights are.
_LAYER_TENSORS = LayerWeights(
    attn_norm=Norm("input_layernorm.weight"),
    q=Projection("self_attn.q_proj.weight"),
    k=Projection("self_attn.k_proj.weight"),
    v=Projection("self_attn.v_proj.weight"),
    o=Projection("self_attn.o_proj.weight"),
    mlp_norm=Norm("post_attention_layernorm.weight"),
    gate=Projection("mlp.gate_proj.weight"),
    up=Projection("mlp.up_proj.weight"),
    down=Projection("mlp.down_proj.weight"))
_EMBEDDING = "embed_tokens.weight"  # after the prefix, see _prefix
_FINAL_NORM = "norm.weight"
_LM_HEAD = "lm_head.weight"


class TensorSource(Protocol):
  """Tensors of a checkpoint under their Hugging Face names, read one at a time."""

  def shape(self, name: str) -> Optional[tuple[int, ...]]:
    """The tensor's shape, or None if the checkpoint has no such tensor."""

  def read(self, name: str) -> np.ndarray:
    """The tensor as a float NumPy array (float32 or the stored float dtype)."""


class ConversionError(ValueError):
  """A checkpoint that cannot become a FamLM (what and why in the message)."""


def _get(hf: Mapping[str, Any], *names, default=None):
  for name in names:
    if hf.get(name) is not None:
      return hf[name]
  return default


def _rope_theta(hf: Mapping[str, Any]) -> float:
  """RoPE base from `rope_theta` (transformers 4) or `rope_parameters` (5)."""
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  kind = rope.get("rope_type", rope.get("type", "default"))
  if kind != "default":
    raise ConversionError(
        f"RoPE scaling of type {kind!r} is not supported (FamLM implements plain "
        "RoPE); the config's rope_scaling/rope_parameters must be default")
  return float(_get(hf, "rope_theta", default=rope.get("rope_theta", 10_000.0)))


def config_from_hf(hf: Mapping[str, Any], **fam_fields) -> FamConfig:
  """The FamConfig of a Hugging Face `config.json` (a dict).

  Args:
    hf: the parsed config.json of a Llama or Gemma model.
    **fam_fields: FamConfig fields the checkpoint does not decide: attention,
      block_size, memory_segments, fam_length, dtype, param_dtype, scan_layers...

  Raises:
    ConversionError: an architecture or option FamLM does not implement.
  """
  family = hf.get("model_type")
  if family not in FAMILIES:
    raise ConversionError(
        f"model_type {family!r} is not supported: fam-convert reads the Llama and "
        f"Gemma families (model_type one of {FAMILIES})")
  for flag, why in (("attention_bias", "FamLM projections have no bias"),
                    ("mlp_bias", "FamLM projections have no bias"),
                    ("use_bidirectional_attention", "FamLM is a causal decoder")):
    if hf.get(flag):
      raise ConversionError(f"{flag}=True is not supported ({why})")
  act = _get(hf, "hidden_activation", "hidden_act")
  # Gemma's first configs say 'gelu' but the model was trained with (and
  # transformers runs) the tanh approximation, which is what geglu computes.
  want_act = {"llama": ("silu",),
              "gemma": ("gelu_pytorch_tanh", "gelu")}[family]
  if act not in want_act:
    raise ConversionError(f"{family} with hidden_act={act!r} is not supported "
                          f"(expected one of {want_act})")
  d_model = _required_int(hf, "hidden_size")
  heads = _required_int(hf, "num_attention_heads")
  fields = dict(
      vocab_size=_required_int(hf, "vocab_size"),
      num_layers=_required_int(hf, "num_hidden_layers"),
      d_model=d_model,
      num_heads=heads,
      num_kv_heads=int(_get(hf, "num_key_value_heads", default=heads)),
      head_dim=int(_get(hf, "head_dim", default=d_model // heads)),
      mlp_dim=_required_int(hf, "intermediate_size"),
      activation="swiglu" if family == "llama" else "geglu",
      norm="rmsnorm",
      norm_eps=float(_get(hf, "rms_norm_eps", default=1e-6)),
      norm_scale_offset=0.0 if family == "llama" else 1.0,
      scale_embeddings=family == "gemma",
      tie_embeddings=bool(_get(hf, "tie_word_embeddings",
                               default=family == "gemma")),
      rope_theta=_rope_theta(hf),
  )
  if fam_fields.get("lora_rank"):
    raise ConversionError("convert with lora_rank=0: adapters are added when "
                          "fine-tuning starts")
  return FamConfig(**{**fields, **fam_fields})


def _required_int(hf: Mapping[str, Any], name: str) -> int:
  """config.json's integer `name` (576 or 576.0), or a ConversionError."""
  if name not in hf:
    raise ConversionError(f"config.json has no {name!r}")
  value = hf[name]
  if isinstance(value, bool) or not (
      isinstance(value, int) or isinstance(value, float) and value.is_integer()):
    raise ConversionError(f"config.json: {name!r} must be an integer; got "
                          f"{value!r}")
  return int(value)


def init_summarization(embedding: np.ndarray, fam_length: int, method: str,
                       seed: int = 0,
                       bos_token_id: Optional[int] = None) -> np.ndarray:
  """Initial summarization embeddings P [F, D] of a pretrained model.

  [choice] The paper learns P "like a soft prompt" but does not say how it starts.
  - `bos` (default): F copies of the BOS token's embedding. F identical FAM
    tokens attending only to each other carry identical values, so each layer's
    initial FAM is exactly the state of a lone BOS token, the start of every
    pretraining sequence. Measured on SmolLM2 before fine-tuning (Botchan,
    5,696 tokens, N=512, m=3, F=64, first_fam_residual='initial'): perplexity
    49.5 with `bos`, 581 with `vocab`, 4,800 with `random` (the first block
    alone: 43.6, 37.5, 75.8); with the paper's zero residual 3,379, 14,527,
    8,589. `bos` is what keeps the updated FAMs usable.
  - `vocab`: the embeddings of F token ids drawn at random, the soft-prompt
    initialisation of Lester et al. 2021 ("The Power of Scale for
    Parameter-Efficient Prompt Tuning").
  - `random`: N(0, σ²), σ the standard deviation of the embedding table.
  """
  if method not in FAM_INITS:
    raise ConversionError(f"fam_init={method!r}: expected one of {FAM_INITS}")
  rng = np.random.default_rng(seed)
  vocab = embedding.shape[0]
  if method == "bos":
    if bos_token_id is None or not 0 <= bos_token_id < vocab:
      raise ConversionError(
          f"fam_init='bos' needs the checkpoint's bos_token_id (got "
          f"{bos_token_id!r}, vocabulary {vocab}); choose fam_init='vocab'")
    return np.repeat(np.asarray(embedding[bos_token_id:bos_token_id + 1]),
                     fam_length, axis=0)
  if method == "vocab":
    ids = rng.choice(vocab, size=fam_length, replace=fam_length > vocab)
    return np.asarray(embedding[np.sort(ids)])
  std = float(np.std(embedding.astype(np.float32)))
  return rng.normal(0.0, std, (fam_length, embedding.shape[1])).astype(
      embedding.dtype)


def _prefix(source: TensorSource) -> str:
  """'model.' for *ForCausalLM checkpoints, '' for bare *Model ones."""
  for prefix in ("model.", ""):
    if source.shape(prefix + _EMBEDDING):
      return prefix
  raise ConversionError("the checkpoint has no tensor 'model.embed_tokens.weight' "
                        "(nor 'embed_tokens.weight'): not a Llama/Gemma decoder")


def _read_as(source: TensorSource, name: str, hf_shape: tuple[int, ...],
             shape: tuple[int, ...], dtype, why: str,
             transpose: bool) -> np.ndarray:
  """Reads `name` (expected `hf_shape`) and lays it out as `shape`, after
  transposing a linear weight's [out, in] to [in, out]."""
  got = source.shape(name)
  if got is None:
    raise ConversionError(f"tensor {name!r} is missing from the checkpoint "
                          f"(expected shape {hf_shape}, {why})")
  if tuple(got) != tuple(hf_shape):
    raise ConversionError(f"tensor {name!r} has shape {tuple(got)}; expected "
                          f"{tuple(hf_shape)} ({why})")
  x = source.read(name)
  # np.array copies: the result never aliases the (memory-mapped) checkpoint.
  return np.array(x.T if transpose else x, dtype).reshape(shape)


def _hf_shape(shape: tuple[int, ...], num_in_axes: Optional[int]):
  """[in..., out...] -> the [out, in] of a Hugging Face linear weight (a norm
  scale, num_in_axes None, keeps its shape)."""
  if num_in_axes is None:
    return shape
  return (int(np.prod(shape[num_in_axes:])), int(np.prod(shape[:num_in_axes])))


def _why(cfg: FamConfig, what: str) -> str:
  dims = (f"hidden_size={cfg.d_model}, num_attention_heads={cfg.num_heads}, "
          f"num_key_value_heads={cfg.num_kv_heads}, head_dim={cfg.head_dim}, "
          f"intermediate_size={cfg.mlp_dim}, vocab_size={cfg.vocab_size}")
  return f"FamLM weight {what}; config: {dims}"


def convert_params(source: TensorSource, cfg: FamConfig, *, fam_init: str = "bos",
                   seed: int = 0,
                   bos_token_id: Optional[int] = None) -> dict[str, Any]:
  """FamLM `params` (JAX arrays of cfg.param_dtype) from a checkpoint's tensors.

  Every weight is checked against the shape `cfg` implies before it is read,
  and written straight into its place in the stacked [L, ...] arrays, so peak
  memory is one copy of the model plus one tensor (scanned layers; unscanned
  ones are cut out of the stacked arrays and free them only at the end).
  """
  if cfg.lora_rank:
    raise ConversionError("convert with lora_rank=0: adapters are added when "
                          "fine-tuning starts")
  params = traverse_util.flatten_dict(
      _read_weights(source, cfg, fam_init, seed, bos_token_id).to_params())
  # Hand over to JAX one leaf at a time, dropping each NumPy copy: orbax saves
  # device arrays with about one model size less peak memory than NumPy arrays
  # (fam-convert of a 594 MiB Llama: peak RSS 1.36 GiB instead of 1.94 GiB).
  for key in params:
    params[key] = jax.device_put(params[key])
  return traverse_util.unflatten_dict(params)


def _read_weights(source: TensorSource, cfg: FamConfig, fam_init: str,
                  seed: int, bos_token_id: Optional[int]) -> ModelWeights:
  """Every weight of the FamLM of `cfg` as a NumPy array, layers stacked."""
  target = jax.eval_shape(lambda: ModelWeights.from_params(
      FamLM(cfg).init(jax.random.PRNGKey(0),
                      jnp.zeros((1, 1), jnp.int32))["params"], cfg))
  dtype = cfg.weights_dtype
  prefix = _prefix(source)

  def tensor(name, shape, what, num_in_axes=None, why=""):
    """Tensor `name` laid out as `shape` (transposed if a linear weight)."""
    return _read_as(source, name, _hf_shape(shape, num_in_axes), shape, dtype,
                    _why(cfg, what) + why, transpose=num_in_axes is not None)

  def stacked(name, shape, what, num_in_axes=None):
    value = np.empty(shape, dtype)
    for i in range(cfg.num_layers):
      value[i] = tensor(f"{prefix}layers.{i}.{name}", shape[1:], what,
                        num_in_axes)
    return value

  def norm(table: Norm, like: Norm, what: str, read=stacked) -> Norm:
    if like.bias is not None:
      raise ConversionError(f"FamLM weight {what} has a bias (norm="
                            f"{cfg.norm!r}); Llama/Gemma norms have none")
    return Norm(read(table.scale, like.scale.shape, what))

  def projection(table: Projection, like: Projection, what: str) -> Projection:
    return Projection(stacked(table.kernel, like.kernel.shape, what,
                              like.num_in_axes), num_in_axes=like.num_in_axes)

  layers = target.layers
  embedding = tensor(prefix + _EMBEDDING, target.embedding.shape,
                     "token embedding")
  weights = ModelWeights(
      embedding=embedding,
      final_norm=norm(Norm(prefix + _FINAL_NORM), target.final_norm,
                      "final norm", read=tensor),
      layers=LayerWeights(
          attn_norm=norm(_LAYER_TENSORS.attn_norm, layers.attn_norm,
                         "layers.attn_norm"),
          mlp_norm=norm(_LAYER_TENSORS.mlp_norm, layers.mlp_norm,
                        "layers.mlp_norm"),
          **{name: projection(getattr(_LAYER_TENSORS, name), p,
                              f"layers.{name}")
             for name, p in layers.projections().items()}),
      num_layers=cfg.num_layers, scanned=cfg.scan_layers)
  if target.lm_head is not None:
    weights = weights.replace(lm_head=tensor(
        _LM_HEAD, target.lm_head.shape, "output projection", num_in_axes=1,
        why="; the config has tie_word_embeddings=False"))
  if target.summarization_embeddings is not None:
    weights = weights.replace(summarization_embeddings=init_summarization(
        embedding, cfg.num_fam_tokens, fam_init, seed,
        bos_token_id).astype(dtype))
  return weights
