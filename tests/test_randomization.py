"""Random position offset and random state passing (paper appendix B.2, 3.2)."""

import jax
import numpy as np

from fam_jax.randomization import (MAX_POSITION_OFFSET, random_state_passing,
                                   sample_position_offset)


def test_position_offset_distribution():
  offsets = np.asarray(sample_position_offset(jax.random.PRNGKey(0), 20_000))
  assert MAX_POSITION_OFFSET == 62831  # floor(2π·10000)
  assert offsets.dtype == np.int32
  assert offsets.min() == 0 and offsets.max() <= MAX_POSITION_OFFSET
  zero = offsets == 0
  assert abs(zero.mean() - 0.5) < 0.02  # p=0.5 of offset 0
  nonzero = offsets[~zero]
  # Uniform over [0, 62831]: mean ≈ 31415, quartiles ≈ 15708 / 47123.
  assert abs(nonzero.mean() - MAX_POSITION_OFFSET / 2) < 600
  q1, q3 = np.percentile(nonzero, [25, 75])
  assert abs(q1 - MAX_POSITION_OFFSET / 4) < 800
  assert abs(q3 - 3 * MAX_POSITION_OFFSET / 4) < 800


def test_position_offset_options():
  never_zero = sample_position_offset(jax.random.PRNGKey(1), 1000,
                                      zero_probability=0.0, max_offset=10)
  assert np.asarray(never_zero).max() <= 10
  always = sample_position_offset(jax.random.PRNGKey(1), 100, zero_probability=1.0)
  assert np.all(np.asarray(always) == 0)


def test_state_passing_shares_first_example_with_probability_08():
  fam = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 2, 8))
  kept = []
  for i in range(2000):
    state, valid = random_state_passing(jax.random.PRNGKey(i), fam)
    valid = np.asarray(valid)
    assert valid.shape == (4,) and (valid.all() or not valid.any())
    kept.append(valid[0])
  np.testing.assert_array_equal(state, np.broadcast_to(fam[:, :1], fam.shape))
  assert abs(np.mean(kept) - 0.8) < 0.03


def test_state_passing_per_example():
  fam = jax.random.normal(jax.random.PRNGKey(0), (3, 1000, 2, 8))
  state, valid = random_state_passing(jax.random.PRNGKey(3), fam,
                                      share_first_example=False,
                                      keep_probability=0.3)
  np.testing.assert_array_equal(state, fam)
  assert abs(np.asarray(valid).mean() - 0.3) < 0.05
