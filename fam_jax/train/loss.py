"""The training loss: weighted token cross-entropy, plus an optional z-loss.

One function serves `fam-train` and the t5x model (`FamDecoderOnlyModel`), so both
optimise exactly the same number on the same batch.

Normalisation: the loss of a batch is sum(weight · cross-entropy) / sum(weight), the
mean over weighted target tokens. With gradient accumulation the sums are
accumulated over microbatches and divided once, so accumulating A microbatches
gives the loss (and gradient) of the whole batch, not a mean of means.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LossSums(NamedTuple):
  """Sums over the tokens of a (micro)batch; add them up, then `normalize`.

  Attributes:
    loss: sum of weight · (cross-entropy + z_loss · log(Z)²), what is optimised.
    cross_entropy: sum of weight · cross-entropy (no z-loss): perplexity.
    weight: sum of the loss weights.
    correct: sum of weight · [argmax logits == target].
  """

  loss: jax.Array
  cross_entropy: jax.Array
  weight: jax.Array
  correct: jax.Array

  def __add__(self, other: "LossSums") -> "LossSums":  # type: ignore[override]
    return LossSums(*(a + b for a, b in zip(self, other)))

  def normalize(self) -> dict[str, jax.Array]:
    """Means per unit of weight: loss, cross_entropy, accuracy, and weight."""
    denominator = jnp.maximum(self.weight, 1e-8)
    return {"loss": self.loss / denominator,
            "cross_entropy": self.cross_entropy / denominator,
            "accuracy": self.correct / denominator,
            "weight": self.weight}


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array,
                           weights: jax.Array, *, z_loss: float = 0.0
                           ) -> LossSums:
  """Sums of the token loss over a batch.

  Args:
    logits: [..., V] next-token logits (any float dtype; computed in float32).
    targets: [...] integer target ids.
    weights: [...] loss weights (0 on padding and prompts, 0.1 on the paper's
      auxiliary target, 1 on answers).
    z_loss: coefficient of the auxiliary log(Z)² term (PaLM's z-loss); 0 for none.

  Returns:
    LossSums.
  """
  logits = logits.astype(jnp.float32)
  weights = weights.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32),
                                     axis=-1)[..., 0]
  cross_entropy = log_z - target_logit
  loss = cross_entropy + z_loss * jnp.square(log_z) if z_loss else cross_entropy
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return LossSums(loss=jnp.sum(weights * loss),
                  cross_entropy=jnp.sum(weights * cross_entropy),
                  weight=jnp.sum(weights),
                  correct=jnp.sum(weights * correct))
