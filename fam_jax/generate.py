"""Generation on top of the streaming path: prefill a prompt, then sample.

Memory stays constant however long the prompt (see `streaming`); a batch of
streams generates together, each stopping at its own stop token.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
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
             progress: Optional[Callable[[int, int], None]] = None,
             tokens_per_dispatch: int = 16) -> Generation:
  """Prefills `prompts` ([B, T], stream b reads lengths[b] tokens) and samples.

  Decoding runs on the device, `tokens_per_dispatch` tokens per call (sampling
  and stop tokens inside one jitted loop), not one Python call per token.

  Args:
    on_token: called with (stream, token) for every generated token, in
      bursts of up to tokens_per_dispatch.
    progress: called with (tokens prefilled, total) while prefilling.
  """
  if max_new_tokens < 0:
    raise ValueError(f"max_new_tokens must be >= 0; got {max_new_tokens}")
  if tokens_per_dispatch < 1:
    raise ValueError(f"tokens_per_dispatch must be >= 1; got {tokens_per_dispatch}")
  start = time.perf_counter()
  logits, state = streaming.prefill(params, cfg, state, prompts, lengths=lengths,
                                    progress=progress)
  jax.block_until_ready(logits)
  prefill_seconds = time.perf_counter() - start
  prompt_tokens = int(np.sum(lengths) if lengths is not None
                      else np.asarray(prompts).size)

  batch = logits.shape[0]
  stop = jnp.asarray(list(stop_tokens) or [-1], jnp.int32)
  active = jnp.ones((batch,), bool)
  stopped = jnp.zeros((batch,), bool)
  full = jnp.zeros((batch,), bool)
  out: list[list[int]] = [[] for _ in range(batch)]
  rng = jax.random.PRNGKey(seed)
  start = time.perf_counter()
  done = 0
  while done < max_new_tokens:
    steps = min(tokens_per_dispatch, max_new_tokens - done)
    run = _decode(params, state, logits, rng, active, stopped, full, stop,
                  jnp.int32(steps), cfg, sampling, tokens_per_dispatch)
    state, logits, rng, active, stopped, full, tokens, emitted = run
    tokens, emitted = np.asarray(tokens), np.asarray(emitted)
    for t, b in zip(*np.nonzero(emitted)):
      out[b].append(int(tokens[t, b]))
      if on_token is not None:
        on_token(int(b), int(tokens[t, b]))
    done += steps
    if not np.asarray(active).any():
      break
  jax.block_until_ready(state)
  return Generation(tokens=out, stopped=np.asarray(stopped).tolist(),
                    full=np.asarray(full).tolist(), state=state,
                    prefill_seconds=prefill_seconds,
                    decode_seconds=time.perf_counter() - start,
                    prompt_tokens=prompt_tokens)


@functools.partial(jax.jit, static_argnames=("cfg", "sampling", "width"),
                   donate_argnames=("state",))
def _decode(params, state, logits, rng, active, stopped, full, stop, steps,
            cfg: FamConfig, sampling: SamplingConfig, width: int):
  """Up to `steps` (<= width) tokens of every active stream in one dispatch:
  sample, stop at a stop token (or, attention='full', when the KV cache is
  full), feed the token back.

  Returns:
    (state, logits, rng, active, stopped, full, tokens [width, B],
    emitted [width, B]: the tokens that belong to the generation).
  """
  batch = logits.shape[0]

  def body(carry):
    i, state, logits, rng, active, stopped, full, tokens, emitted = carry
    if not cfg.is_blockwise:
      no_room = active & (state.fill >= state.block_size)
      full, active = full | no_room, active & ~no_room
    rng, step_rng = jax.random.split(rng)
    token = sample(step_rng, logits, sampling)
    finished = active & jnp.isin(token, stop)
    emitted = emitted.at[i].set(active & ~finished)
    tokens = tokens.at[i].set(token)
    stopped, active = stopped | finished, active & ~finished
    logits, state = streaming.step(params, state,
                                   jnp.where(active, token, 0)[:, None],
                                   active.astype(jnp.int32), cfg, False)
    return i + 1, state, logits, rng, active, stopped, full, tokens, emitted

  def more(carry):
    return (carry[0] < steps) & jnp.any(carry[4])

  carry = (0, state, logits, rng, active, stopped, full,
           jnp.zeros((width, batch), jnp.int32), jnp.zeros((width, batch), bool))
  _, state, logits, rng, active, stopped, full, tokens, emitted = (
      jax.lax.while_loop(more, body, carry))
  return state, logits, rng, active, stopped, full, tokens, emitted
