"""Choosing the next token from logits: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import dataclasses
import functools

import gin
import jax
import jax.numpy as jnp


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to pick tokens.

  Attributes:
    temperature: 0 is greedy (argmax); otherwise logits are divided by it.
    top_k: keep only the k most likely tokens (0: all).
    top_p: keep the smallest set of most likely tokens whose probability reaches
      top_p (nucleus sampling; 1: all). The most likely token is always kept.
  """

  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"SamplingConfig.temperature must be >= 0; got "
                       f"{self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"SamplingConfig.top_k must be >= 0; got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"SamplingConfig.top_p must be in (0, 1]; got {self.top_p}")


def filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Sets the logits of tokens outside top-k / top-p to -inf. [B, V] float32."""
  logits = logits.astype(jnp.float32)
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep a token if the probability mass before it is below top_p.
    before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = before < top_p
    keep = jnp.zeros_like(keep_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, -jnp.inf)
  return logits


@functools.partial(jax.jit, static_argnames="config")
def sample(rng: jax.Array, logits: jax.Array, config: SamplingConfig) -> jax.Array:
  """[B, V] logits -> [B] int32 token ids."""
  if config.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  filtered = filter_logits(logits / config.temperature, config.top_k, config.top_p)
  return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)
