"""The paper's two training-time randomisations (appendix B.2 and section 3.2).

Random Position Offset: each example's positions are shifted by an offset drawn
uniformly from [0, 2π·10000] (the wavelength of RoPE's slowest frequency), and with
probability 0.5 the offset is 0. At inference the offset is 0.

Random State Passing: the FAM at the end of a training step is kept; the next step
starts from it with probability 0.8, otherwise from the learned initial FAM. The
paper keeps the first example's FAM and shares it across the next batch. This
teaches the model to read FAM states that summarise arbitrarily long histories.

Both are plain functions of a PRNG key, so they run inside a jitted train step.
"""

from __future__ import annotations

import math

import gin
import jax
import jax.numpy as jnp

# floor(2π·10000): offsets are integers [choice: the paper's draw is continuous;
# integer positions keep RoPE tables exact and streaming positions integral].
MAX_POSITION_OFFSET = int(2 * math.pi * 10_000)


@gin.configurable
def sample_position_offset(rng: jax.Array, batch_size: int, *,
                           max_offset: int = MAX_POSITION_OFFSET,
                           zero_probability: float = 0.5) -> jax.Array:
  """[batch_size] int32 offsets: 0 with probability zero_probability, else
  uniform over the integers 0..max_offset."""
  zero_rng, offset_rng = jax.random.split(rng)
  offsets = jax.random.randint(offset_rng, (batch_size,), 0, max_offset + 1,
                               dtype=jnp.int32)
  keep_zero = jax.random.bernoulli(zero_rng, zero_probability, (batch_size,))
  return jnp.where(keep_zero, 0, offsets)


@gin.configurable
def random_state_passing(rng: jax.Array, previous_fam: jax.Array, *,
                         keep_probability: float = 0.8,
                         share_first_example: bool = True):
  """Chooses the FAM a training step starts from.

  Args:
    rng: PRNG key.
    previous_fam: [L, B, F, D] final FAM of the previous step
      (`FamLM(..., return_fam_state=True)`).
    keep_probability: probability of continuing from previous_fam (paper: 0.8).
    share_first_example: the paper's variant: every example of the batch starts
      from example 0's FAM and one coin decides for the whole batch. False: each
      example continues from its own row with its own coin.

  Returns:
    (fam_state [L, B, F, D], fam_state_valid [B] bool) to pass to FamLM; where
    fam_state_valid is False the example starts from the learned initial FAM.
  """
  batch = previous_fam.shape[1]
  if share_first_example:
    fam_state = jnp.broadcast_to(previous_fam[:, :1], previous_fam.shape)
    keep = jnp.broadcast_to(jax.random.bernoulli(rng, keep_probability), (batch,))
  else:
    fam_state = previous_fam
    keep = jax.random.bernoulli(rng, keep_probability, (batch,))
  return jax.lax.stop_gradient(fam_state), keep
