"""FamLM: the decoder-only TransformerFAM language model (Flax linen).

    logits = FamLM(cfg).apply(variables, tokens)                       # [B, T, V]
    logits, fam = FamLM(cfg).apply(variables, tokens, return_fam_state=True)

Parameters: token_embedder/embedding [V, D], summarization_embeddings [F, D] (fam
only), layers/... (stacked [L, ...] when cfg.scan_layers, else layers_0, layers_1,
...), final_norm/..., lm_head/kernel [D, V] (untied only); the names are in
`param_names.py`, and `weights.ModelWeights` reads them. Logical axis names are in
the `params_axes` collection that `init` returns.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen import partitioning as nn_partitioning

from fam_jax import blockwise, masks
from fam_jax import param_names as names
from fam_jax.config import FamConfig
from fam_jax.layers import embed, output_logits
from fam_jax.weights import NormWeights, declare_layer_weights, embedding_init

param_with_axes = nn_partitioning.param_with_axes
constrain = nn_partitioning.with_sharding_constraint

_REMAT_POLICIES = {
    "full": None,  # save nothing but the layer inputs
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class DecoderLayer(nn.Module):
  """Declares one layer's weights and runs `blockwise.decoder_layer`.

  The scan carry is (activations [B, T, D], initial-FAM chain [F, D]): layer l
  receives F_0^l, the summarization embeddings propagated through layers 1..l-1,
  and hands F_0^{l+1} to the next layer.
  """

  cfg: FamConfig

  @nn.compact
  def __call__(self, carry, fam_state: Optional[jax.Array],
               ctx: blockwise.SequenceContext, fam_state_valid):
    cfg = self.cfg
    x, fam_chain = carry
    w = declare_layer_weights(cfg)
    fam_in = fresh = initial_fam = None
    if cfg.num_fam_tokens:
      initial_fam = fam_chain
      batch = x.shape[0]
      fam_in = jnp.broadcast_to(fam_chain, (batch, *fam_chain.shape))
      fresh = jnp.ones((batch,), bool)
      if fam_state is not None:
        fam_in = jnp.where(fam_state_valid[:, None, None],
                           fam_state.astype(fam_in.dtype), fam_in)
        fresh = ~fam_state_valid
      fam_chain = blockwise.initial_fam_layer(w, fam_chain, cfg)
    x, fam_out = blockwise.decoder_layer(w, x, fam_in, fresh, initial_fam, ctx,
                                         cfg)
    x = constrain(x, ("batch", "length", "embed"))
    return (x, fam_chain), fam_out


class FamLM(nn.Module):
  """Decoder-only language model with full, BSWA or FAM attention."""

  cfg: FamConfig

  @nn.compact
  def __call__(self,
               tokens: jax.Array,
               *,
               positions: Optional[jax.Array] = None,
               segment_ids: Optional[jax.Array] = None,
               position_offset: Optional[jax.Array] = None,
               fam_state: Optional[jax.Array] = None,
               fam_state_valid: Optional[jax.Array] = None,
               return_fam_state: bool = False):
    """Next-token logits for every position.

    Args:
      tokens: [B, T] token ids in [0, vocab_size), any T >= 1 (the last partial
        block is padded internally and masked; real tokens never see padding).
        Integer arrays; float arrays only when every value is a whole number
        (t5x initialises with float ones). Checked when the values are known:
        outside jit, an id out of range or a fractional float raises
        ValueError. Under jit they cannot be checked: an id >= vocab_size
        turns that example's logits into NaN (all of them with full
        attention, from the id's block on with bswa/fam), an id -k reads the
        embedding of id vocab_size - k and floats are truncated. Check ids
        before calling a jitted apply (`check_token_ids`; the CLIs and the
        streaming path do).
      positions: [B, T] absolute positions; default 0..T-1.
      segment_ids: [B, T] ids of packed examples, 0 for padding (t5x convention).
        No information crosses segments, through tokens or FAM (see `masks`).
      position_offset: [B] integers added to the positions (random position
        offset during training, see `randomization.sample_position_offset`).
      fam_state: [L, B, F, D] per-layer FAM entering the first block, e.g. the
        final FAM of the previous step (random state passing). Default: the
        learned initial FAM.
      fam_state_valid: [B] bool, where False the example starts from the learned
        initial FAM despite fam_state. Default all True.
      return_fam_state: also return the final per-layer FAM [L, B, F, D] (the FAM
        after the last block holding a real token).

    Returns:
      float32 logits [B, T, V], and the final FAM if return_fam_state.
    """
    cfg = self.cfg
    if not isinstance(tokens, jax.core.Tracer):
      check_token_ids(tokens, cfg.vocab_size)
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] == 0:
      raise ValueError(f"tokens must be [batch, length>=1]; got {tokens.shape}")
    tokens = tokens.astype(jnp.int32)  # t5x initialises with float ones
    batch, length = tokens.shape
    f = cfg.num_fam_tokens
    if (fam_state is not None or return_fam_state) and not f:
      raise ValueError("fam_state/return_fam_state need attention='fam'; this "
                       f"model has attention={cfg.attention!r}")
    if fam_state is not None:
      want = (cfg.num_layers, batch, f, cfg.d_model)
      if tuple(fam_state.shape) != want:
        raise ValueError(f"fam_state must be [layers, batch, fam_length, d_model]"
                         f" = {want}; got {tuple(fam_state.shape)}")
      if fam_state_valid is None:
        fam_state_valid = jnp.ones((batch,), bool)

    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32),
                                   (batch, length))
    elif tuple(positions.shape) != (batch, length):
      raise ValueError(f"positions must have the shape of tokens {tokens.shape};"
                       f" got {tuple(positions.shape)}")
    positions = positions.astype(jnp.int32)
    if position_offset is not None:
      positions = positions + jnp.asarray(position_offset, jnp.int32)[:, None]
    valid = jnp.ones((batch, length), bool)
    if segment_ids is not None:
      if tuple(segment_ids.shape) != (batch, length):
        raise ValueError("segment_ids must have the shape of tokens "
                         f"{tokens.shape}; got {tuple(segment_ids.shape)}")
      segment_ids = jnp.asarray(segment_ids, jnp.int32)
      valid = segment_ids != 0

    embedding = _Param(names.EMBEDDING, (cfg.vocab_size, cfg.d_model),
                       ("vocab", "embed"), embedding_init(cfg),
                       cfg.weights_dtype, name=names.TOKEN_EMBEDDER)()
    x = embed(jnp.take(embedding, tokens, axis=0), cfg)

    if cfg.is_blockwise:
      pad = -length % cfg.block_size
      x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
      valid = jnp.pad(valid, ((0, 0), (0, pad)))
      if segment_ids is not None:
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)))
      # Padding continues the positions so that the FAM positions stay defined.
      positions = jnp.concatenate(
          [positions, positions[:, -1:] + 1 + jnp.arange(pad, dtype=jnp.int32)],
          axis=1)
    ctx = blockwise.SequenceContext(positions=positions, valid=valid,
                                    segment_ids=segment_ids)
    fam_chain = None
    if f:
      ctx = ctx._replace(fam_positions=blockwise.fam_positions(
          masks.split_blocks(positions, cfg.block_size), f))
      if segment_ids is not None:
        ctx = ctx._replace(first_segment=masks.first_valid(segment_ids, valid))
      summarization = param_with_axes(
          names.SUMMARIZATION_EMBEDDINGS, embedding_init(cfg), (f, cfg.d_model),
          cfg.weights_dtype, axes=("fam", "embed"))
      fam_chain = embed(summarization, cfg)

    x = constrain(x, ("batch", "length", "embed"))
    (x, _), fam_out = self._layers((x, fam_chain), fam_state, ctx, fam_state_valid)

    lm_head = None
    if not cfg.tie_embeddings:
      lm_head = _Param(names.KERNEL, (cfg.d_model, cfg.vocab_size),
                       ("embed", "vocab"),
                       nn.initializers.variance_scaling(1.0, "fan_in",
                                                        "truncated_normal"),
                       cfg.weights_dtype, name=names.LM_HEAD)()
    logits = output_logits(x[:, :length],
                           NormWeights(cfg, name=names.FINAL_NORM)(),
                           embedding, lm_head, cfg)
    logits = constrain(logits, ("batch", "length", "vocab"))
    if return_fam_state:
      return logits, fam_out
    return logits

  def _layers(self, carry, fam_state, ctx, fam_state_valid):
    """Applies all layers; returns (carry, per-layer final FAM [L, B, F, D])."""
    cfg = self.cfg
    layer = DecoderLayer
    if cfg.remat != "none":
      layer = nn.remat(layer, policy=_REMAT_POLICIES[cfg.remat],
                       prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn_partitioning.scan_with_axes(
          layer,
          variable_axes={"params": 0},
          split_rngs={"params": True},
          in_axes=(0, nn.broadcast, nn.broadcast),
          length=cfg.num_layers,
          axis_name="layers")
      return stack(cfg, name=names.LAYERS)(carry, fam_state, ctx,
                                           fam_state_valid)
    fam_out = []
    for i in range(cfg.num_layers):
      layer_state = None if fam_state is None else fam_state[i]
      carry, out = layer(cfg, name=names.layer_name(i))(carry, layer_state, ctx,
                                                        fam_state_valid)
      fam_out.append(out)
    return carry, (jnp.stack(fam_out) if cfg.num_fam_tokens else None)


def check_token_ids(tokens, vocab_size: int) -> None:
  """Raises ValueError unless every id is a whole number in [0, vocab_size)."""
  ids = np.asarray(tokens)
  if ids.dtype == bool or not (np.issubdtype(ids.dtype, np.integer) or
                               np.issubdtype(ids.dtype, np.floating)):
    raise ValueError(f"token ids must be integers; got dtype {ids.dtype}")
  if np.issubdtype(ids.dtype, np.floating):
    fractional = ids != np.round(ids)
    if fractional.any():
      where = tuple(int(i) for i in np.argwhere(fractional)[0])
      raise ValueError(f"token ids must be whole numbers; got {ids[where]} at "
                       f"index {list(where)} ({ids.dtype})")
  bad = (ids < 0) | (ids >= vocab_size)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"token id {ids[where]} at index {list(where)} is outside "
                     f"the vocabulary [0, {vocab_size})")


class _Param(nn.Module):
  """A parameter group holding one array (token_embedder, lm_head)."""

  param_name: str
  shape: tuple[int, ...]
  axes: tuple[str, ...]
  initializer: Callable
  param_dtype: Any

  @nn.compact
  def __call__(self) -> jax.Array:
    return param_with_axes(self.param_name, self.initializer, self.shape,
                           self.param_dtype, axes=self.axes)
