"""The block-major streaming path: constant memory however long the input.

A `StreamState` holds, per layer, the FAM entering the current block (and its keys
and values), a ring buffer with the keys/values of the last m blocks, and the
keys/values of the block being filled. Tokens go in chunks of up to one block;
when a stream's block fills up, each layer updates its FAM from that block exactly
as the training path does (`blockwise.fam_scan`) and the block moves into the ring.
Every array has a fixed shape, so one compiled step serves an unbounded stream.

`attention='full'` streams as one block whose size is the stream's capacity (an
ordinary KV cache, read a tile at a time: `_attend_cache`); `bswa` is the same
without FAM.

    state = init_state(params, cfg, batch_size=1)
    logits, state = prefill(params, cfg, state, tokens)       # [B, V] last token
    logits, state = decode_step(params, cfg, state, next_token)
"""

from __future__ import annotations

import functools
import json
import os
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fam_jax import atomic, blockwise, masks
from fam_jax.checkpoint import (config_to_dict, orbax_checkpointer,
                                params_fingerprint, restore_arrays)
from fam_jax.config import FamConfig
from fam_jax.jsonfile import read_json
from fam_jax.layers import (embed, group_queries, online_softmax_add,
                            online_softmax_finish, online_softmax_start,
                            output_logits, post_attention, pre_attention)
from fam_jax.weights import ModelWeights

# /2: with the weights' fingerprint; /3: KV caches head-major [.., K, N, E].
STATE_FORMAT = "fam-jax-stream/3"
STATE_FILE = "stream.json"


class StreamState(NamedTuple):
  """Everything a batch of streams remembers. Layer-major: [L, B, ...].

  Attributes:
    position: [B] absolute position of the next token.
    fill: [B] tokens already in the current block.
    blocks_done: [B] completed blocks; block b sits in ring slot b % m.
    fam_fresh: [B] the FAM is still the initial one (its first update uses a zero
      residual, as in training).
    fam: [L, B, F, D] FAM entering the current block.
    fam_k, fam_v: [L, B, F, K, E] its keys (RoPE at the F positions just before
      the block) and values.
    memory_k, memory_v: [L, B, K, m, N, E] the last m blocks' keys and values.
    block_k, block_v: [L, B, K, N, E] the current block's keys and values.

  The KV caches are head-major (each key/value head's slots contiguous) so
  that attention reads them in place (`_attend_window`, `_attend_cache`).
  """

  position: jax.Array
  fill: jax.Array
  blocks_done: jax.Array
  fam_fresh: jax.Array
  fam: jax.Array
  fam_k: jax.Array
  fam_v: jax.Array
  memory_k: jax.Array
  memory_v: jax.Array
  block_k: jax.Array
  block_v: jax.Array

  @property
  def block_size(self) -> int:
    return self.block_k.shape[3]


def _stream_block_size(cfg: FamConfig, capacity: Optional[int]) -> int:
  if cfg.is_blockwise:
    return cfg.block_size
  if not capacity or capacity < 1:
    raise ValueError("attention='full' streams into a KV cache of fixed size: "
                     "pass capacity=<max tokens> to init_state")
  return capacity


def init_state(params, cfg: FamConfig, batch_size: int = 1, *,
               start_position: int = 0,
               capacity: Optional[int] = None) -> StreamState:
  """A fresh state: the learned initial FAM of every layer, empty memory.

  Args:
    params: the model's params.
    cfg: its config.
    batch_size: number of independent streams.
    start_position: position of the first token (0 at inference).
    capacity: attention='full' only: the most tokens the stream can hold.
  """
  n = _stream_block_size(cfg, capacity)
  m = cfg.memory_segments if cfg.is_blockwise else 0
  f, b, layers = cfg.num_fam_tokens, batch_size, cfg.num_layers
  kv = (cfg.num_kv_heads, cfg.head_dim)
  heads, head_dim = kv
  dtype = cfg.compute_dtype
  zeros = lambda *shape: jnp.zeros(shape, dtype)
  position = jnp.full((b,), start_position, jnp.int32)
  # Separate buffers for every field: the step donates them.
  fam = zeros(layers, b, f, cfg.d_model)
  fam_k, fam_v = zeros(layers, b, f, *kv), zeros(layers, b, f, *kv)
  if f:
    fam, fam_k, fam_v = _initial_fam(params, cfg, position)
  return StreamState(
      position=position,
      fill=jnp.zeros((b,), jnp.int32),
      blocks_done=jnp.zeros((b,), jnp.int32),
      fam_fresh=jnp.ones((b,), bool),
      fam=fam, fam_k=fam_k, fam_v=fam_v,
      memory_k=zeros(layers, b, heads, m, n, head_dim),
      memory_v=zeros(layers, b, heads, m, n, head_dim),
      block_k=zeros(layers, b, heads, n, head_dim),
      block_v=zeros(layers, b, heads, n, head_dim))


@functools.partial(jax.jit, static_argnames="cfg")
def _initial_fam(params, cfg: FamConfig, position: jax.Array):
  """Each layer's F_0 (summarization embeddings through the layers below it),
  with keys at the F positions before `position`."""
  w = ModelWeights.from_params(params, cfg)
  f = cfg.num_fam_tokens
  batch = position.shape[0]
  fam_positions = position[:, None] - f + jnp.arange(f)

  def layer(chain, lw):
    fam = jnp.broadcast_to(chain, (batch, *chain.shape))
    _, k, v = pre_attention(lw, fam, fam_positions, cfg)
    return blockwise.initial_fam_layer(lw, chain, cfg), (fam, k, v)

  _, (fam, k, v) = jax.lax.scan(layer, embed(w.summarization_embeddings, cfg),
                                w.layers)
  return fam, k, v


# attention='full' reads its KV cache in tiles of this many slots, and only the
# tiles that hold keys (`_attend_cache`). [choice: 512, the prefill chunk.
# SmolLM2 at 5.7k tokens on 2 CPU cores decoded 149-160 ms/token with 512,
# 163-168 with 2,048, 1,080 with one tile of the whole cache.]
CACHE_TILE = 512
# Tokens per prefill step for attention='full' (blockwise attention steps a
# block at a time).
FULL_CHUNK = 512


def default_chunk(cfg: FamConfig, block_size: int) -> int:
  """The widest prefill step of a stream whose blocks hold block_size slots
  (for attention='full': its capacity)."""
  return block_size if cfg.is_blockwise else min(FULL_CHUNK, block_size)


def _attend_cache(q, cache_k, cache_v, layer, query_slot, end):
  """attention='full': a chunk's queries over one layer's KV cache, causal.

  The keys are read tile by tile with an online softmax (running max, sum and
  weighted values), and only the tiles below the fullest stream's end: the
  work follows the filled prefix, not the capacity, and one compiled step
  serves every length. No [chunk, capacity] scores exist at any time.

  Args:
    q: [B, C, H, E] the chunk's queries.
    cache_k, cache_v: [L, B, K, N, E] every layer's cache, the chunk written.
    layer: this layer's index into the caches.
    query_slot: [B, C] the cache slot of each query (it sees slots up to it).
    end: [B] slots filled after the chunk (later slots are empty).

  Returns:
    [B, C, H, E].
  """
  _, b, kv_heads, n, e = cache_k.shape
  c = q.shape[1]
  tile = min(CACHE_TILE, n)
  rows = group_queries(q, kv_heads)  # [B, K, C*G, E]

  def read(cache, at):
    return jax.lax.dynamic_slice(cache, (layer, 0, 0, at, 0),
                                 (1, b, kv_heads, tile, e))[0]

  def one_tile(i, carry, interior: bool):
    start = i * tile
    at = jnp.minimum(start, n - tile)  # a last, partial tile reads back
    mask = None
    if not interior:  # mask the slots above a query, past the end, read back
      slot = at + jnp.arange(tile)
      mask = ((slot >= start) & (slot[None, None] <= query_slot[..., None])
              & (slot < end[:, None, None]))  # [B, C, tile]
    return online_softmax_add(carry, rows, read(cache_k, at),
                              read(cache_v, at), mask, c)

  carry = online_softmax_start(rows)
  # Interior tiles: every slot filled and below every query of every stream,
  # so they skip the mask (its select was ~4% of a SmolLM2 prefill); only the
  # diagonal tiles and those past a stream's end are masked.
  interior = jnp.minimum(jnp.min(query_slot[:, 0]) + 1, jnp.min(end)) // tile
  tiles = (jnp.max(end) + tile - 1) // tile
  carry = jax.lax.fori_loop(0, interior, functools.partial(
      one_tile, interior=True), carry)
  carry = jax.lax.fori_loop(interior, tiles, functools.partial(
      one_tile, interior=False), carry)
  return online_softmax_finish(carry, c, q.dtype)


def _attend_window(q, ring_k, ring_v, fam_k, fam_v, block_k, block_v,
                   ring_valid, own):
  """attention='bswa'/'fam': a chunk's queries over [ring | FAM | block], one
  piece at a time with an online softmax.

  Each ring segment (a memory block) is one piece, read in a loop over the
  segments that hold a block: those that do in every stream skip the mask.
  [choice: pieces, not one masked softmax over the concatenated keys (as
  `layers.attend` computes it, and this step did before e4aa215): a SmolLM2
  prefill chunk's attention (512 queries over 3 x 512 ring + 512 block keys)
  took 85-88 ms that way and 35-39 ms read in 512-key pieces in a loop, 2 CPU
  cores.]

  Args:
    q: [B, C, H, E].
    ring_k, ring_v: [B, K, m, N, E] the layer's ring of memory segments.
    fam_k, fam_v: [B, F, K, E] the FAM's keys and values (F may be 0).
    block_k, block_v: [B, K, N, E] the current block, the chunk written.
    ring_valid, own: `masks.stream_chunk_mask_parts`.

  Returns:
    [B, C, H, E].
  """
  c = q.shape[1]
  rows = group_queries(q, block_k.shape[1])  # [B, K, C*G, E]
  carry = online_softmax_start(rows)
  if ring_k.shape[2]:
    segment = lambda ring, j: jax.lax.dynamic_index_in_dim(ring, j, axis=2,
                                                           keepdims=False)

    def one_segment(j, carry, everyone: bool):
      mask = None if everyone else ring_valid[:, j, None, None]  # [B, 1, 1]
      return online_softmax_add(carry, rows, segment(ring_k, j),
                                segment(ring_v, j), mask, c)

    filled = jnp.sum(ring_valid, axis=1)  # [B] the valid slots are a prefix
    carry = jax.lax.fori_loop(0, jnp.min(filled), functools.partial(
        one_segment, everyone=True), carry)
    carry = jax.lax.fori_loop(jnp.min(filled), jnp.max(filled),
                              functools.partial(one_segment, everyone=False),
                              carry)
  if fam_k.shape[1]:
    carry = online_softmax_add(carry, rows, jnp.swapaxes(fam_k, 1, 2),
                               jnp.swapaxes(fam_v, 1, 2), None, c)
  carry = online_softmax_add(carry, rows, block_k, block_v, own, c)
  return online_softmax_finish(carry, c, q.dtype)


def _write_chunk(cache, new, layer, fill, end, start):
  """Writes new[b, :end[b] - fill[b]] into cache[layer, b, :, fill[b]:end[b]].

  One dynamic_update_slice of C slots per stream (in place in a donated
  buffer); the window starts at start[b] <= fill[b] so that it fits in the
  block, and slots of the window outside [fill, end) keep their keys.

  Args:
    cache: [L, B, K, N, E]; new: [B, C, K, E].
  """
  b, c = new.shape[:2]
  heads, head_dim = cache.shape[2], cache.shape[4]
  new = jnp.swapaxes(new, 1, 2)  # [B, K, C, E]
  for s in range(b):
    at = (layer, s, 0, start[s], 0)
    old = jax.lax.dynamic_slice(cache, at, (1, 1, heads, c, head_dim))[0, 0]
    slot = start[s] + jnp.arange(c)
    keep = (slot >= fill[s]) & (slot < end[s])
    source = jnp.clip(slot - fill[s], 0, c - 1)
    window = jnp.where(keep[:, None], new[s][:, source], old)
    cache = jax.lax.dynamic_update_slice(cache, window[None, None], at)
  return cache


def _move_block_into_ring(memory, block, complete, blocks_done):
  """Stream b's completed block goes into ring slot blocks_done[b] % m.

  Args:
    memory: [L, B, K, m, N, E]; block: [L, B, K, N, E].
  """
  layers, _, heads, m, n, head_dim = memory.shape
  for s in range(block.shape[1]):
    at = (0, s, 0, blocks_done[s] % m, 0, 0)
    old = jax.lax.dynamic_slice(memory, at, (layers, 1, heads, 1, n, head_dim))
    new = jnp.where(complete[s], block[:, s:s + 1, :, None], old)
    memory = jax.lax.dynamic_update_slice(memory, new, at)
  return memory


def step(params, state: StreamState, tokens: jax.Array, n_new: jax.Array,
         cfg: FamConfig, all_logits: bool):
  """Consumes tokens[b, :n_new[b]] of every stream b, never crossing the end of
  its current block (n_new[b] <= N - fill[b]; the chunk width C <= N).

  Returns:
    (logits [B, C, V] if all_logits else [B, V] of each stream's last new token,
    new state).
  """
  # Unscanned params are stacked here on every call: convert checkpoints to
  # scanned layers (the default) for fast streaming.
  w = ModelWeights.from_params(params, cfg)
  n = state.block_size
  m = state.memory_k.shape[3]
  f = cfg.num_fam_tokens
  b, c = tokens.shape
  positions = state.position[:, None] + jnp.arange(c)  # [B, C]
  end = state.fill + n_new  # [B] block slots filled after this chunk
  complete = (end == n) if cfg.is_blockwise else jnp.zeros((b,), bool)
  start = jnp.minimum(state.fill, n - c)

  # Keys: [ring (m·N) | FAM (F) | current block], read a piece at a time
  # (`_attend_window`); full attention reads its cache in tiles
  # (`_attend_cache`).
  if cfg.is_blockwise:
    ring_valid, own = masks.stream_chunk_mask_parts(
        state.fill, end, state.blocks_done, c, n, m)
  query_slot = state.fill[:, None] + jnp.arange(c)
  block_start = state.position - state.fill
  next_block_start = state.position + n_new

  def layer(carry, scanned):
    x, blk_k, blk_v, index = carry
    lw, fam_k, fam_v, mem_k, mem_v = scanned
    q, k, v = pre_attention(lw, x, positions, cfg)
    blk_k = _write_chunk(blk_k, k, index, state.fill, end, start)
    blk_v = _write_chunk(blk_v, v, index, state.fill, end, start)
    layer_kv = lambda cache: jax.lax.dynamic_slice(
        cache, (index, 0, 0, 0, 0), (1, *cache.shape[1:]))[0]  # [B, K, N, E]
    if cfg.is_blockwise:
      heads = _attend_window(q, mem_k, mem_v, fam_k, fam_v, layer_kv(blk_k),
                             layer_kv(blk_v), ring_valid, own)
    else:
      heads = _attend_cache(q, blk_k, blk_v, index, query_slot, end)
    x = post_attention(lw, heads, x, cfg)
    return (x, blk_k, blk_v, index + 1), None

  x = embed(jnp.take(w.embedding, tokens, axis=0), cfg)
  (x, blk_k, blk_v, _), _ = jax.lax.scan(
      layer, (x, state.block_k, state.block_v, 0),
      (w.layers, state.fam_k, state.fam_v, state.memory_k, state.memory_v))
  fams = (state.fam, state.fam_k, state.fam_v)
  ring = (state.memory_k, state.memory_v)

  def finish_blocks():
    """The streams whose block just filled up: every layer's FAM is updated
    from its block (a layer's new FAM depends on its own FAM and its block's
    keys/values only), and the block moves into the ring."""
    new_fams = fams if not f else _update_fams(
        w, *fams, blk_k, blk_v, state.fam_fresh, complete, block_start,
        next_block_start, cfg)
    new_ring = ring if not m else tuple(
        _move_block_into_ring(memory, block, complete, state.blocks_done)
        for memory, block in zip(ring, (blk_k, blk_v)))
    return new_fams, new_ring

  if f or m:
    # One cond per step, taken once per block, after the layer scan: a cond
    # in every layer of every decode step cost the tiny model's decode ~8%
    # even when not taken.
    fams, ring = jax.lax.cond(jnp.any(complete), finish_blocks,
                              lambda: (fams, ring))
  (fam, fam_k, fam_v), (mem_k, mem_v) = fams, ring
  if not all_logits:
    last = jnp.clip(n_new - 1, 0, c - 1)
    x = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
  logits = output_logits(x, w.final_norm, w.embedding, w.lm_head, cfg)
  new_state = StreamState(
      position=next_block_start,
      fill=jnp.where(complete, 0, end),
      blocks_done=state.blocks_done + complete,
      fam_fresh=state.fam_fresh & ~complete,
      fam=fam, fam_k=fam_k, fam_v=fam_v, memory_k=mem_k, memory_v=mem_v,
      block_k=blk_k, block_v=blk_v)
  return logits, new_state


def _update_fams(w, fam, fam_k, fam_v, blk_k, blk_v, fresh, complete,
                 block_start, next_block_start, cfg: FamConfig):
  """`_update_fam` for every layer (a scan over the stacked layers).

  Args:
    fam: [L, B, F, D]; fam_k, fam_v: [L, B, F, K, E]; blk_k, blk_v:
      [L, B, K, N, E], the blocks just written.
  """
  heads_major = lambda x: jnp.swapaxes(x, 1, 2)  # [B, K, N, E] -> [B, N, K, E]

  def layer(_, scanned):
    lw, fam, fam_k, fam_v, blk_k, blk_v = scanned
    return None, _update_fam(lw, fam, fam_k, fam_v, heads_major(blk_k),
                             heads_major(blk_v), fresh, complete, block_start,
                             next_block_start, cfg)

  _, new = jax.lax.scan(layer, None,
                        (w.layers, fam, fam_k, fam_v, blk_k, blk_v))
  return new


def _update_fam(lw, fam, fam_k, fam_v, blk_k, blk_v, fresh, complete,
                block_start, next_block_start, cfg: FamConfig):
  """`blockwise.update_fam` for the streams whose block just filled up; the
  others keep their FAM. Also returns the new FAM's keys and values at the F
  positions before the next block."""
  f = cfg.num_fam_tokens
  arange = jnp.arange(f)
  q, _, _ = pre_attention(lw, fam, block_start[:, None] - f + arange, cfg)
  mask = masks.fam_update_mask(jnp.ones(blk_k.shape[:2], bool), f)  # full block
  new_fam = blockwise.update_fam(lw, fam, q, fam_k, fam_v, blk_k, blk_v, mask,
                                 fresh, cfg)
  _, new_k, new_v = pre_attention(lw, new_fam,
                                  next_block_start[:, None] - f + arange, cfg)
  pick = lambda new, old: jnp.where(
      complete.reshape(-1, *[1] * (old.ndim - 1)), new, old)
  return pick(new_fam, fam), pick(new_k, fam_k), pick(new_v, fam_v)


_jit_step = jax.jit(step, static_argnames=("cfg", "all_logits"),
                    donate_argnames=("state",))


def check_state(state: StreamState, cfg: FamConfig) -> None:
  """Raises ValueError if `state` was not made for a model with `cfg`."""
  layers, batch = state.fam.shape[:2]
  m = cfg.memory_segments if cfg.is_blockwise else 0
  n = state.block_size
  kv = (cfg.num_kv_heads, cfg.head_dim)
  fam_kv = (cfg.num_layers, batch, cfg.num_fam_tokens, *kv)
  want = {
      "fam": (cfg.num_layers, batch, cfg.num_fam_tokens, cfg.d_model),
      "fam_k": fam_kv, "fam_v": fam_kv,
      "memory_k": (cfg.num_layers, batch, kv[0], m, n, kv[1]),
      "memory_v": (cfg.num_layers, batch, kv[0], m, n, kv[1]),
      "block_k": (cfg.num_layers, batch, kv[0], n, kv[1]),
      "block_v": (cfg.num_layers, batch, kv[0], n, kv[1]),
      "position": (batch,), "fill": (batch,), "blocks_done": (batch,),
      "fam_fresh": (batch,),
  }
  for name, shape in want.items():
    got = tuple(getattr(state, name).shape)
    if got != shape:
      raise ValueError(f"this StreamState does not belong to this model: "
                       f"state.{name} has shape {got}, the config needs {shape}")
  if cfg.is_blockwise and state.block_size != cfg.block_size:
    raise ValueError(f"StreamState block size {state.block_size} != "
                     f"cfg.block_size {cfg.block_size}")


def _check_lengths(lengths, batch: int, length: int) -> np.ndarray:
  """lengths as [B] int64; refuses floats and a shape that is not [B]."""
  if lengths is None:
    return np.full((batch,), length, np.int64)
  array = np.asarray(lengths)
  if array.shape != (batch,):
    raise ValueError(f"lengths must hold one length per stream, shape "
                     f"({batch},); got shape {array.shape}")
  if not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"lengths must be integers; got {array.tolist()} "
                     f"({array.dtype})")
  return array.astype(np.int64)


def _check_tokens(tokens: np.ndarray, lengths: np.ndarray, cfg: FamConfig) -> None:
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [streams, length]; got shape {tokens.shape}")
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"token ids must be integers; got dtype {tokens.dtype}")
  if np.any(lengths < 1):
    raise ValueError(f"empty prompt: stream(s) {np.flatnonzero(lengths < 1).tolist()}"
                     " have no tokens")
  if np.any(lengths > tokens.shape[1]):
    raise ValueError(f"lengths {lengths.tolist()} exceed the token array "
                     f"length {tokens.shape[1]}")
  real = np.arange(tokens.shape[1])[None] < lengths[:, None]
  bad = real & ((tokens < 0) | (tokens >= cfg.vocab_size))
  if bad.any():
    stream, index = np.argwhere(bad)[0]
    raise ValueError(f"token id {int(tokens[stream, index])} at stream {stream}, "
                     f"index {index} is outside the vocabulary [0, "
                     f"{cfg.vocab_size})")


def prefill(params, cfg: FamConfig, state: StreamState, tokens, *,
            lengths=None, return_all_logits: bool = False,
            chunk_size: Optional[int] = None,
            progress: Optional[Callable[[int, int], None]] = None):
  """Feeds any number of tokens into the streams, block by block.

  Args:
    params: model params (scanned or unscanned layers).
    cfg: model config.
    state: the streams' state (consumed: its buffers are donated).
    tokens: [B, T] token ids; stream b reads tokens[b, :lengths[b]].
    lengths: [B] tokens per stream (default T for all).
    return_all_logits: return [B, T, V] logits of every token (zeros past a
      stream's length) instead of [B, V] for each stream's last token. Only for
      inputs that fit in memory.
    chunk_size: most tokens per compiled step (default: the block size, or 512
      for full attention).
    progress: called with (tokens consumed, total) after every chunk.

  Returns:
    (logits, new state).
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [streams, length]; got shape {tokens.shape}")
  batch, length = tokens.shape
  lengths = _check_lengths(lengths, batch, length)
  _check_tokens(tokens, lengths, cfg)
  check_state(state, cfg)
  if state.fam.shape[1] != batch:
    raise ValueError(f"state has {state.fam.shape[1]} streams, tokens {batch}")
  n = state.block_size
  if not cfg.is_blockwise:
    used = np.asarray(state.fill)
    if np.any(used + lengths > n):
      raise ValueError(f"attention='full' stream capacity {n} exceeded: "
                       f"{(used + lengths).max()} tokens")
  widest = min(chunk_size or default_chunk(cfg, n), n)
  fill = np.asarray(state.fill).astype(np.int64)
  consumed = np.zeros((batch,), np.int64)
  total = int(lengths.sum())
  outputs = []
  last_logits = None
  while np.any(consumed < lengths):
    take = np.minimum(np.minimum(lengths - consumed, n - fill), widest)
    # A step narrower than `widest` where fewer tokens are left (a short
    # prompt, the last piece of a long one), its width a power of two to
    # bound the compilations: 64 tokens are not computed as a chunk of 512
    # (SmolLM2, 5,696 tokens, one core: +10% prefill tokens/s).
    chunk = min(widest, 1 << int(take.max() - 1).bit_length())
    index = np.minimum(consumed[:, None] + np.arange(chunk)[None], length - 1)
    chunk_tokens = np.where(np.arange(chunk)[None] < take[:, None],
                            np.take_along_axis(tokens, index, axis=1), 0)
    logits, state = _jit_step(params, state, jnp.asarray(chunk_tokens, jnp.int32),
                              jnp.asarray(take, jnp.int32), cfg,
                              return_all_logits)
    if return_all_logits:
      outputs.append((consumed.copy(), take, np.asarray(logits)))
    else:
      # Keep the logits of each stream's latest real token.
      last_logits = logits if last_logits is None else jnp.where(
          jnp.asarray(take > 0)[:, None], logits, last_logits)
    consumed += take
    fill = np.where(fill + take == n, 0, fill + take) if cfg.is_blockwise else fill + take
    if progress is not None:
      # Report computed tokens, not dispatched ones: JAX runs asynchronously,
      # and a bar that races ahead of the work gives wrong tokens/s.
      jax.block_until_ready(logits)
      progress(int(consumed.sum()), total)
  if not return_all_logits:
    return last_logits, state
  all_logits = np.zeros((batch, length, cfg.vocab_size), np.float32)
  for start, take, logits in outputs:
    for s in range(batch):
      all_logits[s, start[s]:start[s] + take[s]] = logits[s, :take[s]]
  return all_logits, state


def prefill_traced(params, cfg: FamConfig, state: StreamState, tokens,
                   lengths):
  """`prefill` for use inside a jitted function (t5x's predict step).

  Stream b reads tokens[b, :lengths[b]] (lengths traced), at most one block per
  iteration of a `lax.while_loop`: memory is the state's plus the token array,
  whatever the length. Nothing is checked (ids, capacity): check beforehand.

  Args:
    tokens: [B, T] int token ids.
    lengths: [B] int tokens per stream, 0 <= lengths[b] <= T.

  Returns:
    (logits [B, V] of each stream's last token (zeros where lengths[b] = 0),
    new state).
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  batch, length = tokens.shape
  lengths = jnp.asarray(lengths, jnp.int32)
  n = state.block_size
  chunk = min(default_chunk(cfg, n), length)
  arange = jnp.arange(chunk)

  def body(carry):
    state, consumed, last = carry
    take = jnp.minimum(jnp.minimum(lengths - consumed, n - state.fill), chunk)
    index = jnp.minimum(consumed[:, None] + arange, length - 1)
    chunk_tokens = jnp.where(arange < take[:, None],
                             jnp.take_along_axis(tokens, index, axis=1), 0)
    logits, state = step(params, state, chunk_tokens, take, cfg, False)
    last = jnp.where((take > 0)[:, None], logits, last)
    return state, consumed + take, last

  last = jnp.zeros((batch, cfg.vocab_size), jnp.float32)
  state, _, last = jax.lax.while_loop(
      lambda carry: jnp.any(carry[1] < lengths), body,
      (state, jnp.zeros((batch,), jnp.int32), last))
  return last, state


def score_traced(params, cfg: FamConfig, state: StreamState, tokens, targets):
  """Log-likelihoods of `targets` with `tokens` streamed in, for use inside jit.

  Every stream reads all T tokens (from an empty state for block alignment:
  fill 0), one block (512 tokens for attention='full') per step of a
  `lax.fori_loop`; only the [B, chunk, V] logits of one step exist at a time.

  Args:
    tokens: [B, T] input ids.
    targets: [B, T] the ids to score: log p(targets[b, t] | tokens[b, :t + 1]).

  Returns:
    ([B, T] float32 log-probabilities, new state).
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  targets = jnp.asarray(targets, jnp.int32)
  batch, length = tokens.shape
  n = state.block_size
  chunk = default_chunk(cfg, n)
  steps = -(-length // chunk)
  pad = steps * chunk - length
  tokens = jnp.pad(tokens, ((0, 0), (0, pad)))
  targets = jnp.pad(targets, ((0, 0), (0, pad)))

  def body(i, carry):
    state, scores = carry
    start = i * chunk
    take = jnp.full((batch,), jnp.minimum(length - start, chunk), jnp.int32)
    chunk_tokens = jax.lax.dynamic_slice_in_dim(tokens, start, chunk, axis=1)
    chunk_targets = jax.lax.dynamic_slice_in_dim(targets, start, chunk, axis=1)
    logits, state = step(params, state, chunk_tokens, take, cfg, True)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, chunk_targets[..., None],
                                 axis=-1)[..., 0]
    return state, jax.lax.dynamic_update_slice_in_dim(scores, picked, start,
                                                      axis=1)

  scores = jnp.zeros((batch, steps * chunk), jnp.float32)
  state, scores = jax.lax.fori_loop(0, steps, body, (state, scores))
  return scores[:, :length], state


def decode_step(params, cfg: FamConfig, state: StreamState, token, *,
                active=None):
  """Feeds one token per stream.

  Args:
    token: [B] token ids.
    active: [B] bool; inactive streams (e.g. finished generations) are left
      unchanged. Default all active.

  Returns:
    (logits [B, V], new state).
  """
  token = np.asarray(token).reshape(-1)
  active = (np.ones(token.shape, bool) if active is None
            else np.asarray(active, bool).reshape(-1))
  check_state(state, cfg)
  if not np.issubdtype(token.dtype, np.integer):
    raise ValueError(f"token ids must be integers; got dtype {token.dtype}")
  if token.shape[0] != state.fam.shape[1] or active.shape != token.shape:
    raise ValueError(f"decode_step needs one token (and active flag) per stream: "
                     f"{state.fam.shape[1]} streams, got {token.shape[0]} tokens")
  bad = active & ((token < 0) | (token >= cfg.vocab_size))
  if bad.any():
    stream = int(np.flatnonzero(bad)[0])
    raise ValueError(f"token id {int(token[stream])} of stream {stream} is outside "
                     f"the vocabulary [0, {cfg.vocab_size})")
  if not cfg.is_blockwise:
    fill = np.asarray(state.fill)
    if np.any(fill[active] >= state.block_size):
      raise ValueError(f"attention='full' stream capacity {state.block_size} "
                       "exceeded")
  return _jit_step(params, state,
                   jnp.asarray(token[:, None], jnp.int32),
                   jnp.asarray(active, jnp.int32), cfg, False)


def save_state(directory: str, state: StreamState, cfg: FamConfig, *, params,
               overwrite: bool = False) -> None:
  """Writes the state, its config and a fingerprint of `params` in one step
  (`atomic.writing`: a killed or failed save leaves the old directory as it was).

  Args:
    directory: absent or empty, or (with overwrite) a saved state to replace.
    state: the streams' state.
    cfg: the config it belongs to.
    params: the weights it was made with (only their fingerprint is stored,
      see `checkpoint.params_fingerprint`; load_state refuses other weights).
    overwrite: replace a state already saved in `directory`.
  """
  fields = state._asdict()
  # orbax refuses arrays of size 0 (the FAM of bswa/full, the ring of full):
  # their shapes and dtypes go into stream.json instead.
  empty = {k: [list(v.shape), str(v.dtype)] for k, v in fields.items()
           if v.size == 0}
  meta = {"format": STATE_FORMAT, "config": config_to_dict(cfg),
          "weights": params_fingerprint(params), "empty": empty,
          "batch_size": int(state.fam.shape[1]), "block_size": state.block_size}
  with atomic.writing(directory, overwrite=overwrite, marker=STATE_FILE,
                      kind="a saved stream state") as tmp:
    with open(os.path.join(tmp, STATE_FILE), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)
    atomic.kill_point("state-meta-written")
    orbax_checkpointer().save(os.path.join(tmp, "state"),
                              {k: v for k, v in fields.items() if k not in empty})
    atomic.kill_point("state-arrays-written")


def read_state_meta(directory: str) -> dict:
  """The stream.json of a saved state (format checked)."""
  path = os.path.join(os.path.abspath(directory), STATE_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: not a saved StreamState")
  meta = read_json(path)
  if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
    found = meta.get("format") if isinstance(meta, dict) else None
    raise ValueError(f"{path}: format {found!r}, expected {STATE_FORMAT!r}")
  missing = [k for k in ("config", "weights", "batch_size", "block_size")
             if k not in meta]
  if missing:
    raise ValueError(f"{path} has no {', '.join(missing)}: damaged")
  return meta


def load_state(directory: str, cfg: FamConfig, *, params) -> StreamState:
  """Reads a state saved by save_state; refuses one saved for another config or
  with other weights than `params`."""
  directory = os.path.abspath(directory)
  meta = read_state_meta(directory)
  meta_path = os.path.join(directory, STATE_FILE)
  ours = config_to_dict(cfg)
  differ = sorted(k for k in set(ours) | set(meta["config"])
                  if ours.get(k) != meta["config"].get(k))
  if differ:
    detail = ", ".join(f"{k}: saved {meta['config'].get(k)!r}, model {ours.get(k)!r}"
                       for k in differ)
    raise ValueError(f"the saved stream belongs to another model config ({detail})")
  weights = params_fingerprint(params)
  if meta.get("weights") != weights:
    raise ValueError(f"{meta_path}: the stream was saved with other weights "
                     f"(fingerprint {meta.get('weights')}, these weights "
                     f"{weights}); resume it with the model that made it")
  restored = restore_arrays(os.path.join(directory, "state"),
                            "the saved stream's arrays")
  if isinstance(restored, dict):
    restored.update({k: jnp.zeros(shape, dtype)
                     for k, (shape, dtype) in meta.get("empty", {}).items()})
  if not isinstance(restored, dict) or set(restored) != set(StreamState._fields):
    raise ValueError(f"{directory}/state: not a StreamState (fields "
                     f"{sorted(restored) if isinstance(restored, dict) else restored})")
  state = StreamState(**restored)
  check_state(state, cfg)
  return state
