"""Who may attend to whom: every attention mask of full, BSWA and FAM attention.

Blockwise attention (BSWA and FAM) cuts the input into blocks of N tokens. The keys
the queries of block τ see are laid out, for every block, as

    [ memory τ-m | ... | memory τ-1 | FAM_{τ-1} | initial FAM | block τ ]
      N keys each (m of them)         F keys      F keys        N keys

(the initial-FAM part exists only for packed inputs, see below) and the FAM update
of block τ (the F FAM queries) sees

    [ FAM entering the update | block τ ]

`memory_windows` builds the memory part for keys, values and key attributes alike,
so the layout is defined once, here. The streaming step keeps the last m blocks
in a ring buffer and uses the same layout with the ring in place of the memory
segments (`stream_chunk_mask_parts`). Masks are booleans, True where a query may look.

Packed inputs (segment_ids, t5x convention: 0 is padding). Tokens see tokens of
their own segment only. A FAM belongs to the segment of the last real token of the
block it compressed; the FAM entering the first block belongs to the segment of the
first real token. A block query sees FAM_{τ-1} if it is of that segment; a query of a
segment that began after FAM_{τ-1} was written sees the layer's initial FAM instead
(for it, working memory starts fresh). The FAM update of block τ summarises the
segment of the block's last real token; if that segment differs from FAM_{τ-1}'s it
starts from the initial FAM with a zero residual, like the first update of a
sequence. So no information crosses example boundaries, through tokens or FAM.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def split_blocks(x: jax.Array, block_size: int) -> jax.Array:
  """[B, T, ...] -> [B, T // block_size, block_size, ...]."""
  b, t = x.shape[:2]
  return x.reshape(b, t // block_size, block_size, *x.shape[2:])


def memory_windows(blocks: jax.Array, memory_segments: int) -> jax.Array:
  """The memory segments of every block, oldest first.

  Args:
    blocks: [B, nb, N, ...] per-block values (keys, values, validity...).
    memory_segments: m.

  Returns:
    [B, nb, m * N, ...] where block τ holds blocks τ-m, ..., τ-1. Blocks before the
    start of the input are zeros (False for booleans): pair with a validity
    window so that they are masked out.
  """
  b, nb, n = blocks.shape[:3]
  rest = blocks.shape[3:]
  if memory_segments == 0:
    return jnp.zeros((b, nb, 0, *rest), blocks.dtype)
  padded = jnp.concatenate(
      [jnp.zeros((b, memory_segments, n, *rest), blocks.dtype), blocks], axis=1)
  # Window j (0 = oldest) of block τ is block τ - m + j, i.e. padded block τ + j.
  windows = [padded[:, j:j + nb] for j in range(memory_segments)]
  return jnp.concatenate(windows, axis=2)


def block_attention_mask(valid_blocks: jax.Array, memory_segments: int,
                         fam_length: int,
                         segment_blocks: Optional[jax.Array] = None,
                         fam_segment: Optional[jax.Array] = None) -> jax.Array:
  """Mask of the block queries of BSWA (fam_length=0) and FAM.

  Args:
    valid_blocks: [B, nb, N] True for real tokens (False: padding).
    memory_segments: m.
    fam_length: F, 0 for BSWA.
    segment_blocks: [B, nb, N] segment ids of packed inputs, or None.
    fam_segment: [B, nb] segment of the FAM entering each block; with
      segment_blocks and F > 0 (then the initial-FAM keys are in the layout).

  Returns:
    [B, nb, N, S] with S = m*N + F + N, or m*N + 2F + N for packed FAM inputs.
  """
  b, nb, n = valid_blocks.shape
  causal = _causal(n)
  memory = memory_windows(valid_blocks, memory_segments)[:, :, None, :]
  own = valid_blocks[:, :, None, :] & causal
  if segment_blocks is not None:
    query_segment = segment_blocks[:, :, :, None]
    memory = memory & (
        memory_windows(segment_blocks, memory_segments)[:, :, None, :]
        == query_segment)
    own = own & (segment_blocks[:, :, None, :] == query_segment)
  memory = jnp.broadcast_to(memory, (b, nb, n, memory.shape[-1]))
  parts = [memory]
  if fam_length:
    if segment_blocks is None:
      parts.append(jnp.ones((b, nb, n, fam_length), bool))
    else:
      same = segment_blocks == fam_segment[:, :, None]  # [B, nb, N]
      parts.append(jnp.broadcast_to(same[..., None], (b, nb, n, fam_length)))
      parts.append(jnp.broadcast_to(~same[..., None], (b, nb, n, fam_length)))
  return jnp.concatenate(parts + [own], axis=-1)


def fam_update_mask(valid_block: jax.Array, fam_length: int,
                    segment_block: Optional[jax.Array] = None,
                    target_segment: Optional[jax.Array] = None) -> jax.Array:
  """Mask of the FAM queries of one block.

  FAM queries see the FAM entering the update bidirectionally (the paper's
  appendix: full attention among FAM activations) and every valid token of the
  current block (of the segment being summarised, for packed inputs); not the
  memory segments.

  Args:
    valid_block: [B, N] validity of the block's tokens.
    fam_length: F.
    segment_block: [B, N] segment ids, or None.
    target_segment: [B] the segment the updated FAM will belong to.

  Returns:
    [B, F, F + N].
  """
  b = valid_block.shape[0]
  block = valid_block
  if segment_block is not None:
    block = block & (segment_block == target_segment[:, None])
  key_valid = jnp.concatenate([jnp.ones((b, fam_length), bool), block], axis=1)
  return jnp.broadcast_to(key_valid[:, None, :],
                          (b, fam_length, key_valid.shape[1]))


def stream_chunk_mask_parts(fill: jax.Array, end: jax.Array,
                            blocks_done: jax.Array, chunk_length: int,
                            block_size: int, memory_segments: int):
  """Mask of a streaming step (the queries of a chunk of up to one block), by
  the pieces of keys it reads.

  A stream's state holds the keys of its last m blocks in a ring buffer and
  those of the block being filled, so the keys a chunk's queries see are

      [ ring (m·N) | FAM_{τ-1} (F) | current block (N) ]

  the layout of `block_attention_mask` with the ring standing in for the memory
  segments (softmax does not care about key order). Chunk token i sits in block
  slot fill + i; it sees every ring slot already holding a block (all of that
  block), the whole FAM, and the block slots up to its own.

  Args:
    fill: [B] block slots filled before this chunk.
    end: [B] block slots filled after it (fill + the chunk's real tokens).
    blocks_done: [B] completed blocks (ring slot j holds a block once j <
      blocks_done).
    chunk_length: C, the chunk's width (tokens past end - fill are padding).
    block_size: N.
    memory_segments: m.

  Returns:
    (ring_valid [B, m]: ring slot j holds a block, for every query; own
    [B, C, N]: the current block's slots each chunk token sees). The FAM needs
    no mask.
  """
  slot = jnp.arange(block_size)
  query_slot = fill[:, None] + jnp.arange(chunk_length)  # [B, C]
  ring_valid = jnp.arange(memory_segments)[None] < blocks_done[:, None]
  own = (slot[None, None] <= query_slot[..., None]) & (slot < end[:, None])[:, None]
  return ring_valid, own


def causal_mask(valid: jax.Array,
                segment_ids: Optional[jax.Array] = None) -> jax.Array:
  """[B, T, T] mask of full causal attention over valid tokens."""
  mask = _causal(valid.shape[1])[None] & valid[:, None, :]
  if segment_ids is not None:
    mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
  return mask


def _causal(size: int) -> jax.Array:
  """[size, size] lower triangle, built from iotas (no size² constant in the HLO)."""
  index = jnp.arange(size)
  return index[:, None] >= index[None, :]


def last_valid(values: jax.Array, valid: jax.Array) -> jax.Array:
  """values[..., i] at the last i where valid[..., i] (at the last i if none)."""
  n = valid.shape[-1]
  index = n - 1 - jnp.argmax(valid[..., ::-1], axis=-1)
  return jnp.take_along_axis(values, index[..., None], axis=-1)[..., 0]


def first_valid(values: jax.Array, valid: jax.Array) -> jax.Array:
  """values[..., i] at the first i where valid[..., i] (at i=0 if none)."""
  index = jnp.argmax(valid, axis=-1)
  return jnp.take_along_axis(values, index[..., None], axis=-1)[..., 0]
