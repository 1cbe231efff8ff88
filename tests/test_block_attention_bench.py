"""benchmarks/block_attention.py compares like with like: its grouped variant
(the blocks mapped over with lax.map) is the training path's block attention,
values and gradients."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from fam_jax.blockwise import FamKeys, block_attention

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import block_attention as bench  # noqa: E402  pylint: disable=g-import-not-at-top


def test_grouped_block_attention_is_block_attention():
  arrays, ctx = bench.inputs(6 * bench.CFG.block_size, bench.CFG)

  def loss(attention):
    return lambda *a: jnp.sum(jnp.sin(attention(*a[:3], FamKeys(*a[3:]))))

  plain = lambda q, k, v, f: block_attention(q, k, v, f, ctx, bench.CFG)
  grouped = lambda q, k, v, f: bench.grouped_block_attention(
      q, k, v, f, ctx, bench.CFG, 2)
  np.testing.assert_allclose(grouped(*arrays[:3], FamKeys(*arrays[3:])),
                             plain(*arrays[:3], FamKeys(*arrays[3:])),
                             atol=1e-5, rtol=1e-5)
  argnums = tuple(range(5))
  for want, got in zip(jax.grad(loss(plain), argnums)(*arrays),
                       jax.grad(loss(grouped), argnums)(*arrays)):
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
