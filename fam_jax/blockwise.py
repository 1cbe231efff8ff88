"""The layer-major training path: one decoder layer over a whole input at once.

For BSWA and FAM a layer (1) projects every token of every block to Q/K/V in one
matmul, (2) runs only the F FAM tokens through `jax.lax.scan` over the blocks (each
step attends over [FAM_{τ-1}, block τ] and applies the feed-forward to F tokens), and
(3) computes the token attention of all blocks in parallel against
[m memory segments, FAM_{τ-1}, own block]. No array grows with the square of the
input length: activations are O(T · (m+1) · N).

This is the paper's Algorithm 2 evaluated in a different order: block-major
evaluation (`streaming`) and the reference loop in the tests give the same numbers.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from fam_jax import masks, scan_grads
from fam_jax.config import FamConfig
from fam_jax.layers import attention, post_attention, pre_attention


class SequenceContext(NamedTuple):
  """Per-sequence data every layer needs; computed once by the model.

  Attributes:
    positions: [B, T] absolute token positions (position offset included). T is a
      multiple of block_size for blockwise attention.
    valid: [B, T] True for real tokens, False for padding.
    fam_positions: [B, nb, F] positions of the FAM that enters each block: the
      F positions just before the block (see `fam_positions`). None without FAM.
    segment_ids: [B, T] segment ids of packed inputs (0 = padding), or None.
    first_segment: [B] segment of the first real token (packed FAM inputs only).
  """

  positions: jax.Array
  valid: jax.Array
  fam_positions: Optional[jax.Array] = None
  segment_ids: Optional[jax.Array] = None
  first_segment: Optional[jax.Array] = None


class FamKeys(NamedTuple):
  """What the queries of each block see of the FAM, per block [B, nb, ...].

  Attributes:
    k, v: [B, nb, F, K, E] keys/values of FAM_{τ-1} (RoPE at its positions).
    segment: [B, nb] the segment FAM_{τ-1} belongs to (packed inputs only).
    initial_k, initial_v: [B, nb, F, K, E] keys/values of the layer's initial FAM,
      for queries of segments that began after FAM_{τ-1} (packed inputs only).
  """

  k: jax.Array
  v: jax.Array
  segment: Optional[jax.Array] = None
  initial_k: Optional[jax.Array] = None
  initial_v: Optional[jax.Array] = None


def fam_positions(block_positions: jax.Array, fam_length: int) -> jax.Array:
  """Positions of the FAM entering each block.

  An updated FAM takes the last F positions of the block it compressed (paper,
  appendix B.2): block positions p..p+N-1 give FAM positions p+N-F..p+N-1. We state
  the rule as "the F positions just before the first position of the next block",
  which also places the initial FAM (or a FAM passed in from an earlier sequence)
  just before the first token. [choice: the paper does not say where F_0 sits.]

  Args:
    block_positions: [B, nb, N].
    fam_length: F.

  Returns:
    [B, nb, F] integer positions.
  """
  next_start = jnp.concatenate(
      [block_positions[:, :1, 0], block_positions[:, :-1, -1] + 1], axis=1)
  return next_start[..., None] - fam_length + jnp.arange(fam_length)


def initial_fam_layer(w, fam: jax.Array, cfg: FamConfig) -> jax.Array:
  """One layer applied to the FAM tokens alone (appendix B.1).

  Layer l's initial FAM is the summarization embeddings propagated through layers
  1..l-1 this way: FAM tokens attend only to each other, bidirectionally. RoPE is
  relative, so the positions given here do not change the result.

  Args:
    w: LayerWeights.
    fam: [..., F, D].
  """
  f = fam.shape[-2]
  positions = jnp.arange(f) - f
  q, k, v = pre_attention(w, fam, positions, cfg)
  heads = attention(q, k, v, jnp.ones((f, f), bool), cfg.attention_kernel)
  return post_attention(w, heads, fam, cfg)


def update_fam(w, fam: jax.Array, q: jax.Array, k: jax.Array, v: jax.Array,
               block_k: jax.Array, block_v: jax.Array, mask: jax.Array,
               fresh: jax.Array, cfg: FamConfig) -> jax.Array:
  """Algorithm 2, step 3: the FAM after a block, F_τ, from F_{τ-1} and the block.

  The FAM queries attend to [F_{τ-1}, block τ] (not the memory segments):
  `A^F = Attn(Q^F, [K^F; K_τ], [V^F; V_τ]) + F_{τ-1}`,
  `F_τ = FF(PreLN(A^F)) + A^F`, with the same weights as the tokens. The
  training scan (`fam_scan`) and the streaming step both call this.

  Args:
    w: LayerWeights.
    fam: [B, F, D] F_{τ-1}, the residual.
    q: [B, F, H, E] its queries; k, v: [B, F, K, E] its keys and values (RoPE
      at its positions, the F positions just before the block).
    block_k, block_v: [B, N, K, E] the block's keys (RoPE applied) and values.
    mask: [B, F, F + N] (`masks.fam_update_mask`).
    fresh: [B] bool, True where F_{τ-1} is the initial FAM: the residual is
      then zero (appendix B.1), unless cfg.first_fam_residual is 'initial'.

  Returns:
    [B, F, D] F_τ.
  """
  heads = attention(q, jnp.concatenate([k, block_k], axis=1),
                    jnp.concatenate([v, block_v], axis=1), mask,
                    cfg.attention_kernel)
  residual = fam
  if cfg.first_fam_residual == "zero":
    residual = jnp.where(fresh[:, None, None], jnp.zeros_like(fam), fam)
  return post_attention(w, heads, residual, cfg)


def fam_scan(w, fam_in: jax.Array, fresh: jax.Array, initial_fam: jax.Array,
             k: jax.Array, v: jax.Array, ctx: SequenceContext, cfg: FamConfig):
  """Runs the FAM of one layer through all blocks (`update_fam` in a scan).

  Args:
    w: LayerWeights.
    fam_in: [B, F, D] FAM entering the first block.
    fresh: [B] bool, True where fam_in is the initial FAM: its first update then
      uses a zero residual instead of F_0 (appendix B.1), unless
      cfg.first_fam_residual is 'initial'.
    initial_fam: [F, D] this layer's initial FAM F_0 (used by packed inputs when a
      new segment starts).
    k, v: [B, T, K, E] the layer's token keys (RoPE applied) and values.
    ctx: SequenceContext.

  Returns:
    (FamKeys for the block queries, [B, F, D] FAM after the last block that has a
    real token).
  """
  n, f = cfg.block_size, cfg.num_fam_tokens
  packed = ctx.segment_ids is not None
  time_major = lambda x: jnp.swapaxes(masks.split_blocks(x, n), 0, 1)
  xs = (time_major(k), time_major(v), time_major(ctx.valid),
        jnp.swapaxes(ctx.fam_positions, 0, 1))
  if packed:
    xs += (time_major(ctx.segment_ids), time_major(ctx.positions))

  def update(params, carry, block):
    w, initial_fam = params
    fam, fresh, segment = carry
    block_k, block_v, block_valid, positions = block[:4]
    has_tokens = jnp.any(block_valid, axis=1)
    q, k_f, v_f = pre_attention(w, fam, positions, cfg)
    k_u, v_u, fam_u, fresh_u = k_f, v_f, fam, fresh
    if packed:
      block_segment, block_positions = block[4:]
      target = masks.last_valid(block_segment, block_valid)
      # The initial FAM sits just before the first token of a new segment.
      starts_new = block_valid & (block_segment != segment[:, None])
      base = masks.first_valid(block_positions, starts_new)
      fam_0 = jnp.broadcast_to(initial_fam, fam.shape).astype(fam.dtype)
      q_0, k_0, v_0 = pre_attention(w, fam_0, base[:, None] - f + jnp.arange(f),
                                    cfg)
      reset = has_tokens & (target != segment)
      pick = lambda a, b: jnp.where(reset.reshape(-1, *[1] * (a.ndim - 1)), a, b)
      q, k_u, v_u, fam_u = pick(q_0, q), pick(k_0, k_f), pick(v_0, v_f), pick(fam_0, fam)
      fresh_u = fresh | reset
      mask = masks.fam_update_mask(block_valid, f, block_segment, target)
      seen = FamKeys(k_f, v_f, segment, k_0, v_0)
      segment = jnp.where(has_tokens, target, segment)
    else:
      mask = masks.fam_update_mask(block_valid, f)
      seen = FamKeys(k_f, v_f)
    new_fam = update_fam(w, fam_u, q, k_u, v_u, block_k, block_v, mask, fresh_u,
                         cfg)
    # A block of padding only (the tail of a padded batch) leaves the FAM as is.
    new_fam = jnp.where(has_tokens[:, None, None], new_fam, fam)
    return (new_fam, fresh & ~has_tokens, segment), seen

  segment = ctx.first_segment if packed else jnp.zeros(fresh.shape, jnp.int32)
  (fam_out, _, _), seen = scan_grads.scan(
      update, (w, initial_fam if packed else None),
      (fam_in.astype(cfg.compute_dtype), fresh, segment), xs,
      unroll=cfg.fam_scan_unroll, batched=cfg.fam_scan_batched_grads)
  seen = jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), seen)
  return seen, fam_out


def block_attention(q, k, v, fam: Optional[FamKeys], ctx: SequenceContext,
                    cfg: FamConfig) -> jax.Array:
  """Token attention of every block at once (BSWA when fam is None).

  Args:
    q: [B, T, H, E]; k, v: [B, T, K, E].
    fam: FamKeys from fam_scan, or None.

  Returns:
    [B, T, H, E] attention outputs.
  """
  heads = attention(*block_attention_inputs(q, k, v, fam, ctx, cfg),
                    cfg.attention_kernel)
  return heads.reshape(q.shape)


def block_attention_inputs(q, k, v, fam: Optional[FamKeys],
                           ctx: SequenceContext, cfg: FamConfig):
  """What `block_attention` attends with, per block: (queries [B, nb, N, H, E],
  keys and values [B, nb, m·N + F (+ F) + N, K, E] laid out as
  [memory segments | FAM | (initial FAM) | block], mask [B, nb, N, keys])."""
  n, m = cfg.block_size, cfg.memory_segments
  q_b, k_b, v_b = (masks.split_blocks(x, n) for x in (q, k, v))
  segments = (None if ctx.segment_ids is None
              else masks.split_blocks(ctx.segment_ids, n))
  keys = [masks.memory_windows(k_b, m)]
  values = [masks.memory_windows(v_b, m)]
  fam_length = 0
  if fam is not None:
    fam_length = fam.k.shape[2]
    keys.append(fam.k)
    values.append(fam.v)
    if fam.initial_k is not None:
      keys.append(fam.initial_k)
      values.append(fam.initial_v)
  mask = masks.block_attention_mask(
      masks.split_blocks(ctx.valid, n), m, fam_length, segments,
      None if fam is None else fam.segment)
  return (q_b, jnp.concatenate(keys + [k_b], axis=2),
          jnp.concatenate(values + [v_b], axis=2), mask)


def full_attention(q, k, v, ctx: SequenceContext, kernel: str = "einsum"
                   ) -> jax.Array:
  """Plain causal attention over the whole input (attention='full')."""
  return attention(q, k, v, masks.causal_mask(ctx.valid, ctx.segment_ids),
                   kernel)


def decoder_layer(w, x: jax.Array, fam_in: Optional[jax.Array],
                  fresh: Optional[jax.Array], initial_fam: Optional[jax.Array],
                  ctx: SequenceContext, cfg: FamConfig):
  """One pre-LN decoder layer over all tokens, training order.

  Args:
    w: LayerWeights.
    x: [B, T, D] layer inputs.
    fam_in, fresh, initial_fam: the FAM entering the first block, whether it is
      the initial FAM, and the layer's initial FAM (see fam_scan); None unless
      attention='fam'.

  Returns:
    ([B, T, D] layer outputs, [B, F, D] final FAM or None).
  """
  q, k, v = pre_attention(w, x, ctx.positions, cfg)
  fam_out = None
  if not cfg.is_blockwise:
    heads = full_attention(q, k, v, ctx, cfg.attention_kernel)
  else:
    fam = None
    if cfg.num_fam_tokens:
      fam, fam_out = fam_scan(w, fam_in, fresh, initial_fam, k, v, ctx, cfg)
    heads = block_attention(q, k, v, fam, ctx, cfg)
  return post_attention(w, heads, x, cfg), fam_out
