"""How much memory a streaming request needs, known before anything is allocated.

    need = stream_memory(cfg, batch_size=1, capacity=8192)
    check_fits(need, cfg)     # raises MemoryTooSmall naming the flag to change

For `attention='full'` the stream is one KV cache of `capacity` tokens, which
grows with the capacity; a step's float32 scores do not: they cover one tile
of the cache at a time ([B, H, c, tile], `streaming.CACHE_TILE`). For bswa/fam
everything is bounded by the block size N and the m memory segments.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from fam_jax.config import FamConfig
from fam_jax.model import FamLM
from fam_jax.streaming import CACHE_TILE, default_chunk
from fam_jax.weights import ModelWeights

GIB = 2**30


class MemoryTooSmall(MemoryError):
  """A request that would not fit; the message gives the estimate and the flag."""


@dataclasses.dataclass(frozen=True)
class StreamMemory:
  """Bytes a streaming request holds at its peak.

  Attributes:
    weights: the parameters.
    state: the StreamState (FAM, ring buffer, current block or KV cache).
    activations: the largest step's temporaries: per layer, float32 scores,
      masked scores and probabilities [B, H, c, S] for c queries and the S
      keys of the FAM and the block (a ring segment is a block's; full
      attention: a tile of its cache), the online softmax's float32
      [B, H, c, E] weighted values, their mask, the keys and values gathered
      for them, the projections and feed-forward activations of the c tokens,
      one layer's weights (sliced out of the stacked layers), and the new
      state (XLA fuses some of these; tests/test_memory.py compares the sum
      with XLA's own analysis: 1.17-1.69x).
  """

  weights: int
  state: int
  activations: int

  @property
  def total(self) -> int:
    return self.weights + self.state + self.activations

  def describe(self) -> str:
    return (f"about {self.total / GIB:,.1f} GiB (KV cache and FAM "
            f"{self.state / GIB:,.1f} GiB, attention activations "
            f"{self.activations / GIB:,.1f} GiB, weights "
            f"{self.weights / GIB:,.1f} GiB)")


def stream_memory(cfg: FamConfig, *, batch_size: int = 1,
                  capacity: Optional[int] = None,
                  chunk: Optional[int] = None) -> StreamMemory:
  """The memory of streaming with `cfg` (see StreamMemory).

  Args:
    cfg: the model config.
    batch_size: streams.
    capacity: attention='full': the KV cache size in tokens.
    chunk: tokens per step (default: streaming.prefill's, N or 512).
  """
  if cfg.is_blockwise:
    n, m = cfg.block_size, cfg.memory_segments
  elif not capacity or capacity < 1:
    raise ValueError("attention='full' streams into a KV cache: pass "
                     f"capacity=<max tokens>; got {capacity!r}")
  else:
    n, m = capacity, 0
  chunk = chunk or default_chunk(cfg, n)
  f, b, layers = cfg.num_fam_tokens, batch_size, cfg.num_layers
  act = cfg.compute_dtype.itemsize
  kv_token = 2 * cfg.num_kv_heads * cfg.head_dim  # keys + values of a token
  counters = b * (3 * 4 + 1)  # position, fill, blocks_done; fam_fresh
  state = layers * b * (f * cfg.d_model + (f + m * n + n) * kv_token) * act
  state += counters
  # The keys whose scores exist at once: the FAM's and the block's (XLA may
  # schedule the two pieces together; a memory segment is one block, in a
  # loop of its own); full attention: a tile of its cache.
  keys = f + n if cfg.is_blockwise else min(n, CACHE_TILE)
  scores = 3 * b * cfg.num_heads * chunk * keys * 4
  mask = b * chunk * keys
  gathered = b * keys * kv_token * act
  projections = b * chunk * (2 * cfg.d_model + (cfg.num_heads + 2 *
                                                cfg.num_kv_heads) * cfg.head_dim) * act
  mlp = 3 * b * chunk * cfg.mlp_dim * act
  # The online softmax carries float32 weighted values.
  carried = b * chunk * cfg.num_heads * cfg.head_dim * 4
  shapes = jax.eval_shape(FamLM(cfg).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 1), jnp.int32))["params"]
  size = lambda tree: sum(int(np.prod(x.shape)) * x.dtype.itemsize
                         for x in jax.tree_util.tree_leaves(tree))
  weights = size(shapes)
  # The layer scan slices each layer's weights out of the stack (a copy).
  layer = size(jax.eval_shape(
      lambda p: ModelWeights.from_params(p, cfg).layers, shapes)) // layers
  # A blockwise step writes the new state beside the old one before the old
  # is freed; full attention's KV cache is updated in place (XLA plans the same
  # temporaries at every capacity).
  written = state if cfg.is_blockwise else 0
  return StreamMemory(weights=weights, state=state,
                      activations=(scores + mask + gathered + projections + mlp
                                   + carried + written + layer))


def available_memory() -> Optional[int]:
  """Bytes free for a new request: the accelerator's free memory, or on CPU
  the host's MemAvailable; None where neither is known."""
  device = jax.devices()[0]
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
      return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def check_fits(need: StreamMemory, cfg: FamConfig, *,
               capacity: Optional[int] = None,
               available: Optional[int] = None) -> None:
  """Raises MemoryTooSmall if `need` exceeds the available memory (measured
  when not given), naming the flags that change it."""
  available = available_memory() if available is None else available
  if available is None or need.total <= available:
    return
  if cfg.is_blockwise:
    request = (f"attention={cfg.attention!r} with --block-size "
               f"{cfg.block_size} and --memory-segments {cfg.memory_segments}")
    change = "lower --block-size or --memory-segments"
  else:
    request = f"--capacity {capacity} (attention='full')"
    change = ("lower --capacity (the most tokens a full-attention stream "
              "holds), or use --attention bswa/fam")
  raise MemoryTooSmall(f"{request} needs {need.describe()} but "
                       f"{available / GIB:,.1f} GiB are available; {change}")
