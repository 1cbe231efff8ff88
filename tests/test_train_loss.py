"""The training loss against a float64 NumPy reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from fam_jax.train.loss import LossSums, weighted_cross_entropy


def reference(logits, targets, weights, z_loss):
  logits = np.asarray(logits, np.float64)
  log_z = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) \
      + logits.max(-1)
  ce = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  loss = ce + z_loss * log_z**2
  correct = logits.argmax(-1) == targets
  return (np.sum(weights * loss), np.sum(weights * ce), np.sum(weights),
          np.sum(weights * correct))


@pytest.mark.parametrize("z_loss", [0.0, 1e-4])
def test_sums_match_reference(z_loss):
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (3, 17, 50)).astype(np.float32)
  targets = rng.integers(0, 50, (3, 17))
  weights = rng.choice([0.0, 0.1, 1.0], (3, 17)).astype(np.float32)
  sums = weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                jnp.asarray(weights), z_loss=z_loss)
  want = reference(logits, targets, weights, z_loss)
  np.testing.assert_allclose([float(x) for x in sums], want, rtol=1e-5)


def test_bfloat16_logits_are_scored_in_float32():
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 3, (2, 9, 30)).astype(np.float32)
  targets = rng.integers(0, 30, (2, 9))
  weights = np.ones((2, 9), np.float32)
  low = jnp.asarray(logits, jnp.bfloat16)
  sums = weighted_cross_entropy(low, jnp.asarray(targets), jnp.asarray(weights))
  want = reference(np.asarray(low.astype(jnp.float32)), targets, weights, 0.0)
  np.testing.assert_allclose(float(sums.loss), want[0], rtol=1e-5)


def test_sums_add_and_normalize_over_microbatches():
  rng = np.random.default_rng(2)
  logits = rng.normal(0, 1, (4, 8, 20)).astype(np.float32)
  targets = rng.integers(0, 20, (4, 8))
  weights = rng.choice([0.0, 0.1, 1.0], (4, 8)).astype(np.float32)
  whole = weighted_cross_entropy(logits, targets, weights).normalize()
  parts = [weighted_cross_entropy(logits[i:i + 2], targets[i:i + 2],
                                  weights[i:i + 2]) for i in (0, 2)]
  summed = (parts[0] + parts[1]).normalize()
  for key in whole:
    np.testing.assert_allclose(float(summed[key]), float(whole[key]), rtol=1e-6)
  # A mean over weighted tokens, not a mean of per-microbatch means.
  ce = reference(logits, targets, weights, 0.0)
  np.testing.assert_allclose(float(whole["loss"]), ce[0] / ce[2], rtol=1e-5)


def test_no_weight_gives_zero_not_nan():
  sums = weighted_cross_entropy(jnp.zeros((1, 3, 5)), jnp.zeros((1, 3), int),
                                jnp.zeros((1, 3)))
  assert isinstance(sums, LossSums)
  metrics = sums.normalize()
  assert float(metrics["loss"]) == 0.0 and float(metrics["weight"]) == 0.0
