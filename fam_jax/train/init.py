"""Where a run starts: the model config, its weights, and the sharded TrainState.

Three starting points (TrainConfig.init_checkpoint):
- None: random weights of the FamConfig the gin files bind;
- a fam-jax checkpoint directory (fam-convert output, or a run's export);
- `gguf:smollm2` or `gguf:PATH`: a llama.cpp file, converted on the fly.
`TrainConfig.model_overrides` then changes what the checkpoint does not fix
(attention, block size, memory segments, FAM length, LoRA, remat, dtypes). Weights
the starting point lacks (LoRA adapters; summarization embeddings of a model
saved without FAM) get the model's own initialisation.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from fam_jax import checkpoint, lora, sharding
from fam_jax.config import FamConfig
from fam_jax.model import FamLM
from fam_jax.train.config import TrainConfig
from fam_jax.train.step import TrainState, split_params

GGUF_PREFIX = "gguf:"
# Fields a conversion cannot take (adapters are added after it).
_LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_targets")


def _split_overrides(overrides):
  base = {k: v for k, v in overrides.items() if k not in _LORA_FIELDS}
  adapters = {k: v for k, v in overrides.items() if k in _LORA_FIELDS}
  return base, adapters


def _check_override_fields(overrides) -> None:
  known = {f.name for f in dataclasses.fields(FamConfig)}
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise ValueError(f"TrainConfig.model_overrides names unknown FamConfig "
                     f"fields {unknown}")


def model_config(train_cfg: TrainConfig) -> FamConfig:
  """The run's FamConfig, without reading any weights."""
  overrides = train_cfg.model_overrides
  _check_override_fields(overrides)
  source = train_cfg.init_checkpoint
  if source is None:
    return FamConfig().replace(**overrides)
  if source.startswith(GGUF_PREFIX):
    from fam_jax.convert import gguf, mapping  # pylint: disable=g-import-not-at-top
    base, adapters = _split_overrides(overrides)
    hf = gguf.GgufCheckpoint(source[len(GGUF_PREFIX):]).config
    return mapping.config_from_hf(hf, **base).replace(**adapters)
  return checkpoint.load_config(source).replace(**overrides)


def starting_params(train_cfg: TrainConfig, cfg: FamConfig) -> Optional[dict]:
  """The weights the starting point provides (host or device arrays), or None
  for a random start."""
  source = train_cfg.init_checkpoint
  if source is None:
    return None
  if source.startswith(GGUF_PREFIX):
    from fam_jax.convert import gguf  # pylint: disable=g-import-not-at-top
    base, _ = _split_overrides(train_cfg.model_overrides)
    params, _ = gguf.convert_gguf(source[len(GGUF_PREFIX):], **base)
    return params
  params, _ = checkpoint.load_checkpoint(source)
  return params


def abstract_variables(cfg: FamConfig):
  """ShapeDtypeStructs of `params` and the `params_axes` collection."""
  return jax.eval_shape(FamLM(cfg).init, jax.random.PRNGKey(0),
                        jnp.zeros((1, 1), jnp.int32))


def trainable_mask(params, train_cfg: TrainConfig, cfg: FamConfig):
  """True where a parameter trains: all of them, or LoRA's (see fam_jax.lora)."""
  if train_cfg.finetune == "full":
    return jax.tree_util.tree_map(lambda _: True, params)
  if not cfg.lora_rank:
    raise ValueError("TrainConfig.finetune='lora' needs FamConfig.lora_rank > 0 "
                     "(e.g. model_overrides={'lora_rank': 64}); or set "
                     "finetune='full'")
  return lora.trainable_mask(params)


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a run's state sits on the mesh."""

  mesh: jax.sharding.Mesh
  params: Any  # params-shaped NamedShardings
  state: Any  # TrainState-shaped NamedShardings
  batch: jax.sharding.NamedSharding
  abstract_state: Any  # TrainState of ShapeDtypeStructs with shardings


def _fam_shape(cfg: FamConfig, train_cfg: TrainConfig):
  if not cfg.num_fam_tokens or not train_cfg.state_passing_probability:
    return None
  return (cfg.num_layers, train_cfg.batch_size, cfg.num_fam_tokens, cfg.d_model)


def make_layout(cfg: FamConfig, train_cfg: TrainConfig, mesh,
                optimizer: optax.GradientTransformation) -> Layout:
  """Shardings of every part of the TrainState, from the logical axis rules."""
  variables = abstract_variables(cfg)
  shapes = variables["params"]
  params = sharding.param_shardings(variables["params_axes"], mesh,
                                    shapes=shapes)
  mask = trainable_mask(shapes, train_cfg, cfg)
  trainable_shapes, _ = split_params(shapes, mask)
  trainable_shardings, _ = split_params(params, mask)
  opt_shapes = jax.eval_shape(optimizer.init, trainable_shapes)
  replicated = sharding.replicated(mesh)

  def opt_leaf(state_leaf, param_sharding, param_shape):
    # Param-shaped statistics shard like their parameter; factored row/column
    # statistics (smaller) are replicated.
    if getattr(state_leaf, "shape", None) == param_shape.shape:
      return param_sharding
    return replicated

  opt = optax.tree_map_params(
      optimizer, opt_leaf, opt_shapes, trainable_shardings, trainable_shapes,
      transform_non_params=lambda _: replicated)
  fam_shape = _fam_shape(cfg, train_cfg)
  fam = None if fam_shape is None else sharding.batch_sharding(mesh, 1, 4)
  state = TrainState(step=replicated, params=params, opt_state=opt,
                     rng=replicated, fam=fam,
                     fam_valid=None if fam is None else replicated)
  abstract = TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32),
      params=shapes, opt_state=opt_shapes,
      rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
      fam=None if fam is None else jax.ShapeDtypeStruct(fam_shape,
                                                        cfg.compute_dtype),
      fam_valid=None if fam is None else jax.ShapeDtypeStruct((), jnp.bool_))
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, state)
  return Layout(mesh=mesh, params=params, state=state,
                batch=sharding.batch_sharding(mesh), abstract_state=abstract)


def _place(value, target: jax.ShapeDtypeStruct) -> jax.Array:
  """A host or device array -> a global array of target's dtype and sharding."""
  host = np.asarray(value, dtype=target.dtype)
  return jax.make_array_from_callback(host.shape, target.sharding,
                                      lambda index: host[index])


def complete_params(loaded: Optional[dict], cfg: FamConfig, layout: Layout,
                    seed: int) -> dict:
  """The full params tree on the mesh: `loaded` leaves where given (shapes
  checked), the model's initialisation for the rest."""
  target = layout.abstract_state.params
  init = jax.jit(lambda rng: FamLM(cfg).init(rng, jnp.zeros((1, 1), jnp.int32))
                 ["params"], out_shardings=layout.params)
  if loaded is None:
    return init(jax.random.PRNGKey(seed))
  flat_target = traverse_util.flatten_dict(target)
  flat_loaded = traverse_util.flatten_dict(dict(loaded))
  missing = [k for k in flat_target if k not in flat_loaded]
  extra = sorted("/".join(k) for k in flat_loaded if k not in flat_target)
  if extra:
    logging.warning("starting checkpoint parameters not in this model, dropped: "
                    "%s", ", ".join(extra))
  fresh = traverse_util.flatten_dict(init(jax.random.PRNGKey(seed))) if missing else {}
  out = {}
  for key, leaf in flat_target.items():
    if key in flat_loaded:
      value = flat_loaded[key]
      if tuple(value.shape) != tuple(leaf.shape):
        raise ValueError(f"starting checkpoint parameter {'/'.join(key)} has "
                         f"shape {tuple(value.shape)}; the model needs "
                         f"{tuple(leaf.shape)}")
      out[key] = _place(value, leaf)
    else:
      out[key] = fresh[key]
  if missing:
    logging.info("initialised parameters the starting point lacks: %s",
                 ", ".join("/".join(k) for k in missing))
  return traverse_util.unflatten_dict(out)


def initial_state(params, cfg: FamConfig, train_cfg: TrainConfig,
                  optimizer: optax.GradientTransformation,
                  layout: Layout) -> TrainState:
  """Step 0: the given params, a fresh optimizer state, no FAM passed yet."""
  mask = trainable_mask(params, train_cfg, cfg)
  abstract = layout.abstract_state

  def build(params):
    trainable, _ = split_params(params, mask)
    fam = fam_valid = None
    if abstract.fam is not None:
      fam = jnp.zeros(abstract.fam.shape, abstract.fam.dtype)
      fam_valid = jnp.zeros((), bool)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(trainable),
                      rng=jax.random.PRNGKey(train_cfg.seed + 1),
                      fam=fam, fam_valid=fam_valid)

  return jax.jit(build, out_shardings=layout.state, donate_argnums=0)(params)
