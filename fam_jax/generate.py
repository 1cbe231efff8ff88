"""Generation on top of the streaming path: prefill a prompt, then sample.

Memory stays constant however long the prompt (see `streaming`); a batch of
streams generates together, each stopping at its own stop token.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from fam_jax import streaming
from fam_jax.config import FamConfig
from fam_jax.sampling import SamplingConfig, sample


@dataclasses.dataclass
class Generation:
  """What `generate` returns.

  Attributes:
    tokens: per stream, the generated ids (without the stop token).
    stopped: per stream, whether a stop token ended it.
    full: per stream, whether its KV cache (attention='full', the state's
      capacity) filled up, which ends it like a stop token. Else
      max_new_tokens ended it.
    state: the streams' state after the last generated token was fed back, so a
      conversation can continue from it.
    prefill_seconds / decode_seconds: wall time of the two phases (the first
      call of each includes compilation).
    prompt_tokens: tokens prefilled.
  """

  tokens: list[list[int]]
  stopped: list[bool]
  full: list[bool]
  state: streaming.StreamState
  prefill_seconds: float
  decode_seconds: float
  prompt_tokens: int

  @property
  def prefill_tokens_per_second(self) -> float:
    return self.prompt_tokens / max(self.prefill_seconds, 1e-9)

  @property
  def decode_tokens_per_second(self) -> float:
    return sum(map(len, self.tokens)) / max(self.decode_seconds, 1e-9)


def generate(params, cfg: FamConfig, state: streaming.StreamState, prompts,
             *, lengths=None, max_new_tokens: int = 64,
             sampling: SamplingConfig = SamplingConfig(),
             stop_tokens: Sequence[int] = (), seed: int = 0,
             on_token: Optional[Callable[[int, int], None]] = None,
             progress: Optional[Callable[[int, int], None]] = None) -> Generation:
  """Prefills `prompts` ([B, T], stream b reads lengths[b] tokens) and samples.

  Args:
    on_token: called with (stream, token) for every generated token, as it comes.
    progress: called with (tokens prefilled, total) while prefilling.
  """
  if max_new_tokens < 0:
    raise ValueError(f"max_new_tokens must be >= 0; got {max_new_tokens}")
  start = time.perf_counter()
  logits, state = streaming.prefill(params, cfg, state, prompts, lengths=lengths,
                                    progress=progress)
  jax.block_until_ready(logits)
  prefill_seconds = time.perf_counter() - start
  prompt_tokens = int(np.sum(lengths) if lengths is not None
                      else np.asarray(prompts).size)

  batch = logits.shape[0]
  stop = np.asarray(list(stop_tokens), np.int64)
  active = np.ones((batch,), bool)
  stopped = [False] * batch
  # attention='full': tokens in each stream's KV cache (tracked here, not read
  # back from the device every step). A full cache ends its stream before a
  # token is sampled that could not be fed back.
  cached = None if cfg.is_blockwise else np.asarray(state.fill).astype(np.int64)
  full = [False] * batch
  out: list[list[int]] = [[] for _ in range(batch)]
  rng = jax.random.PRNGKey(seed)
  start = time.perf_counter()
  for _ in range(max_new_tokens):
    if cached is not None:
      for b in np.flatnonzero(active & (cached >= state.block_size)):
        full[b] = True
      active &= cached < state.block_size
      if not active.any():
        break
    rng, step_rng = jax.random.split(rng)
    token = np.asarray(sample(step_rng, logits, sampling))
    finished = active & np.isin(token, stop)
    for b in np.flatnonzero(active & ~finished):
      out[b].append(int(token[b]))
      if on_token is not None:
        on_token(int(b), int(token[b]))
    for b in np.flatnonzero(finished):
      stopped[b] = True
    active &= ~finished
    if not active.any():
      break
    logits, state = streaming.decode_step(params, cfg, state,
                                          np.where(active, token, 0),
                                          active=active)
    if cached is not None:
      cached += active
  jax.block_until_ready(state)
  return Generation(tokens=out, stopped=stopped, full=full, state=state,
                    prefill_seconds=prefill_seconds,
                    decode_seconds=time.perf_counter() - start,
                    prompt_tokens=prompt_tokens)
