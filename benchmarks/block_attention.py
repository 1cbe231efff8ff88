"""The training path's block attention alone: forward+backward time per token
against length, as written and with the blocks mapped over in groups.

    python benchmarks/block_attention.py --lengths 2048,16384,65536

Question it answers (issue 13, "per-token time within +-10% from 2k to 64k"):
does `blockwise.block_attention` get slower per token as the input grows,
because its [B, blocks, heads, N, (m+1)N+F] scores outgrow the caches? The
`grouped` variant runs the same attention over groups of G blocks with
`lax.map`, which bounds that working set; if the growth were the scores', it
would flatten it. Shapes: the speed issue's d256 model (4 heads of 64, N=256,
m=1, F=16), one row, float32, random inputs; medians of 5 after a compile.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from fam_jax.blockwise import (FamKeys, SequenceContext, block_attention,
                               block_attention_inputs)
from fam_jax.config import FamConfig
from fam_jax.layers import attend

CFG = FamConfig(vocab_size=259, num_layers=4, d_model=256, num_heads=4,
                mlp_dim=1024, block_size=256, memory_segments=1,
                fam_length=16, attention="fam")


def grouped_block_attention(q, k, v, fam: FamKeys, ctx: SequenceContext,
                            cfg: FamConfig, group: int) -> jax.Array:
  """block_attention with its blocks mapped over `group` at a time: the same
  keys, values and mask (`block_attention_inputs`), a bounded score array."""
  q_b, keys, values, mask = block_attention_inputs(q, k, v, fam, ctx, cfg)
  blocks = q_b.shape[1]
  group = min(group, blocks)

  def groups(x):  # [B, nb, ...] -> [nb / group, B, group, ...]
    x = x.reshape(x.shape[0], blocks // group, group, *x.shape[2:])
    return jnp.moveaxis(x, 1, 0)

  out = jax.lax.map(lambda a: attend(*a),
                    (groups(q_b), groups(keys), groups(values), groups(mask)))
  return jnp.moveaxis(out, 0, 1).reshape(q.shape)


def inputs(length: int, cfg: FamConfig):
  rng = np.random.default_rng(0)
  normal = lambda *s: jnp.asarray(rng.standard_normal(s, np.float32))
  blocks, f = length // cfg.block_size, cfg.fam_length
  h, kv, e = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  arrays = (normal(1, length, h, e), normal(1, length, kv, e),
            normal(1, length, kv, e), normal(1, blocks, f, kv, e),
            normal(1, blocks, f, kv, e))
  ctx = SequenceContext(positions=jnp.arange(length)[None],
                        valid=jnp.ones((1, length), bool))
  return arrays, ctx


def seconds(attention, arrays, repeats: int) -> float:
  loss = lambda q, k, v, fk, fv: jnp.sum(attention(q, k, v, FamKeys(fk, fv)) ** 2)
  grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3, 4)))
  jax.block_until_ready(grad(*arrays))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(grad(*arrays))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--lengths", default="2048,16384,65536")
  parser.add_argument("--groups", default="4,8,32",
                      help="blocks per lax.map step of the grouped variant")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  groups = [int(g) for g in args.groups.split(",") if g]
  print("| tokens | " + " | ".join(["as written"] + [f"groups of {g}"
                                                      for g in groups])
        + " |  (µs/token, forward+backward)")
  print("|---:|" + "---:|" * (1 + len(groups)))
  for length in (int(n) for n in args.lengths.split(",")):
    arrays, ctx = inputs(length, CFG)
    variants = [lambda q, k, v, f: block_attention(q, k, v, f, ctx, CFG)]
    variants += [(lambda g: lambda q, k, v, f: grouped_block_attention(
        q, k, v, f, ctx, CFG, g))(g) for g in groups]
    row = [1e6 * seconds(fn, arrays, args.repeats) / length for fn in variants]
    print(f"| {length:,} | " + " | ".join(f"{t:.1f}" for t in row) + " |",
          flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
