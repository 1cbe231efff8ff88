"""Token choice: greedy, temperature, top-k, top-p against their definitions."""

import jax
import numpy as np
import pytest

from fam_jax.sampling import SamplingConfig, filter_logits, sample


def _draws(logits, config, count=4000):
  logits = np.tile(np.asarray(logits, np.float32), (count, 1))
  return np.asarray(sample(jax.random.PRNGKey(0), logits, config))


def test_greedy_is_argmax():
  logits = np.random.default_rng(0).standard_normal((5, 50)).astype(np.float32)
  np.testing.assert_array_equal(
      sample(jax.random.PRNGKey(1), logits, SamplingConfig()), logits.argmax(-1))
  np.testing.assert_array_equal(
      sample(jax.random.PRNGKey(1), logits,
             SamplingConfig(temperature=1.0, top_k=1)), logits.argmax(-1))


def test_temperature_follows_softmax():
  logits = np.log(np.array([0.5, 0.3, 0.2]))
  counts = np.bincount(_draws(logits, SamplingConfig(temperature=2.0)), minlength=3)
  expected = np.exp(logits / 2) / np.exp(logits / 2).sum()
  np.testing.assert_allclose(counts / counts.sum(), expected, atol=0.03)


def test_top_k_keeps_the_k_most_likely():
  logits = np.array([0.1, 2.0, 1.5, -1.0, 1.9, 0.0])
  drawn = set(_draws(logits, SamplingConfig(temperature=1.0, top_k=3)).tolist())
  assert drawn == {1, 2, 4}


def test_top_p_is_the_smallest_set_reaching_p():
  probs = np.array([0.15, 0.5, 0.05, 0.3])
  # Sorted: 0.5, 0.3 (mass before: 0.5 < 0.7, kept), 0.15 (before: 0.8, dropped).
  counts = np.bincount(_draws(np.log(probs), SamplingConfig(temperature=1.0,
                                                            top_p=0.7)),
                       minlength=4)
  assert counts[0] == counts[2] == 0
  np.testing.assert_allclose(counts[[1, 3]] / counts.sum(), [0.625, 0.375],
                             atol=0.03)
  kept = np.isfinite(np.asarray(filter_logits(np.log(probs)[None], 0, 0.01)))
  np.testing.assert_array_equal(kept[0], [False, True, False, False])


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_k=-2),
                                 dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_settings(bad):
  with pytest.raises(ValueError, match="SamplingConfig"):
    SamplingConfig(**bad)
