"""Perplexity of a token sequence, by the training path or by streaming.

    nll = token_nll(params, cfg, tokens)                     # layer-major, one call
    nll = token_nll(params, cfg, tokens, streaming_path=True)  # block by block
    ppl = math.exp(nll.mean())

Both orders compute the same numbers (tests/test_smollm2.py checks it on a real
model); streaming holds one chunk of logits at a time, so it scores texts of any
length in constant memory.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from fam_jax import streaming
from fam_jax.config import FamConfig
from fam_jax.model import FamLM


@jax.jit
def _nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """-log p(target) for logits [..., V] and integer targets [...]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


@functools.lru_cache(maxsize=8)
def _forward(cfg: FamConfig):
  return jax.jit(lambda params, tokens: FamLM(cfg).apply({"params": params},
                                                         tokens))


def token_nll(params, cfg: FamConfig, tokens, *, streaming_path: bool = False,
              chunk_size: Optional[int] = None,
              progress: Optional[Callable[[int, int], None]] = None
              ) -> np.ndarray:
  """Negative log-likelihood of tokens[1:] given their prefixes.

  Args:
    params: model params.
    cfg: model config.
    tokens: [T] token ids of one text (T >= 2).
    streaming_path: score block by block with `streaming.prefill` (constant
      memory) instead of one training-path forward pass.
    chunk_size: tokens per streaming call (default: the block size; 512 for
      attention='full').
    progress: streaming only: called with (tokens done, total).

  Returns:
    float32 [T - 1]: nll[i] = -log p(tokens[i + 1] | tokens[:i + 1]).
  """
  tokens = np.asarray(tokens, np.int32).reshape(-1)
  if tokens.shape[0] < 2:
    raise ValueError("perplexity needs at least 2 tokens")
  if not streaming_path:
    logits = _forward(cfg)(params, tokens[None])[0, :-1]
    return np.asarray(_nll(logits, jnp.asarray(tokens[1:])))
  total = tokens.shape[0]
  state = streaming.init_state(params, cfg, 1, capacity=None if cfg.is_blockwise
                               else total)
  chunk = chunk_size or streaming.default_chunk(cfg, state.block_size)
  out = []
  for start in range(0, total - 1, chunk):
    piece = tokens[start:start + chunk + 1]  # + the token the last one predicts
    logits, state = streaming.prefill(params, cfg, state, piece[None, :-1],
                                      return_all_logits=True)
    out.append(np.asarray(_nll(jnp.asarray(logits[0]), jnp.asarray(piece[1:]))))
    if progress is not None:
      progress(start + len(piece) - 1, total - 1)
  return np.concatenate(out)
