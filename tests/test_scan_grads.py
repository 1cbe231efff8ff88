"""scan_grads.scan: the gradient of a scan with its parameter gradients taken
once for all steps equals autodiff's, whatever the carry and inputs hold."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fam_jax import scan_grads


def _step(params, carry, x):
  """An RNN step with an integer counter in the carry, a boolean input that
  skips steps, and outputs of both kinds."""
  w, b = params
  h, count = carry
  inputs, keep = x
  new_h = jnp.tanh(h @ w + inputs + b)
  new_h = jnp.where(keep, new_h, h)
  return (new_h, count + keep.astype(jnp.int32)), (new_h ** 2, count)


@pytest.mark.parametrize("unroll", [1, 3])
def test_gradients_equal_autodiff(unroll):
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.standard_normal((4, 4)) / 2, jnp.float32)
  b = jnp.asarray(rng.standard_normal(4), jnp.float32)
  h0 = jnp.asarray(rng.standard_normal(4), jnp.float32)
  xs = (jnp.asarray(rng.standard_normal((7, 4)), jnp.float32),
        jnp.asarray([True, True, False, True, False, True, True]))

  def loss(batched):
    def fn(params, h, inputs):
      (h_end, count), (ys, counts) = scan_grads.scan(
          _step, params, (h, jnp.int32(0)), (inputs, xs[1]), unroll=unroll,
          batched=batched)
      weights = jnp.arange(1.0, 8.0)[:, None]
      return (jnp.sum(weights * ys) + jnp.sum(jnp.sin(h_end))
              + 0.0 * (count + counts.sum()))
    return fn

  want = jax.grad(loss(False), argnums=(0, 1, 2))((w, b), h0, xs[0])
  got = jax.grad(loss(True), argnums=(0, 1, 2))((w, b), h0, xs[0])
  for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(want[0][0]).max()) > 0
