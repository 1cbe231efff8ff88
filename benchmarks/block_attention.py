"""The training path's block attention alone: forward+backward time per token
against length, as written (with each attention kernel asked for) and with the
blocks mapped over in groups.

    python benchmarks/block_attention.py --lengths 2048,16384,65536
    # GPU: the paper's 1B shape, bfloat16, fam-jax's einsum vs cuDNN
    python benchmarks/block_attention.py --shape 1b --dtype bfloat16 \
        --kernels einsum,xla,cudnn --groups '' --lengths 8192,32768

Question it answers (issue 13, "per-token time within +-10% from 2k to 64k"):
does `blockwise.block_attention` get slower per token as the input grows,
because its [B, blocks, heads, N, (m+1)N+F] scores outgrow the caches? The
`grouped` variant runs the same attention over groups of G blocks with
`lax.map`, which bounds that working set; if the growth were the scores', it
would flatten it. `--kernels` times FamConfig.attention_kernel's choices
(`layers.attention`) on the same inputs. Shapes (`--shape`): the speed issue's
d256 model (4 heads of 64, N=256, m=1, F=16) or the paper's 1B (12 heads of
128, N=1024, m=3, F=64); one row, random inputs; medians of 5 after a compile.
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
SHAPES = {"d256": CFG,
          "1b": CFG.replace(d_model=1536, num_heads=12, num_kv_heads=12,
                            head_dim=128, mlp_dim=12288, block_size=1024,
                            memory_segments=3, fam_length=64)}


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
  normal = lambda *s: jnp.asarray(rng.standard_normal(s, np.float32),
                                  cfg.compute_dtype)
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
  parser.add_argument("--shape", choices=sorted(SHAPES), default="d256")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--kernels", default="einsum",
                      help="FamConfig.attention_kernel values to time as written")
  parser.add_argument("--groups", default="4,8,32",
                      help="blocks per lax.map step of the grouped variant")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args(argv)
  groups = [int(g) for g in args.groups.split(",") if g]
  kernels = args.kernels.split(",")
  cfgs = [SHAPES[args.shape].replace(dtype=args.dtype, attention_kernel=k)
          for k in kernels]
  print(f"{args.shape}, {args.dtype}, {jax.devices()[0].device_kind}")
  print("| tokens | " + " | ".join([f"{k} as written" for k in kernels]
                                   + [f"groups of {g}" for g in groups])
        + " |  (µs/token, forward+backward)")
  print("|---:|" + "---:|" * (len(kernels) + len(groups)))
  for length in (int(n) for n in args.lengths.split(",")):
    arrays, ctx = inputs(length, cfgs[0])
    variants = [(lambda c: lambda q, k, v, f: block_attention(
        q, k, v, f, ctx, c))(c) for c in cfgs]
    variants += [(lambda g: lambda q, k, v, f: grouped_block_attention(
        q, k, v, f, ctx, cfgs[0], g))(g) for g in groups]
    row, errors = [], []
    for fn in variants:
      try:
        row.append(f"{1e6 * seconds(fn, arrays, args.repeats) / length:.1f}")
      except Exception as error:  # pylint: disable=broad-except
        # cuDNN refuses some shapes and every non-NVIDIA backend: say so, go on.
        row.append(f"failed ({len(errors) + 1})")
        errors.append(f"({len(errors) + 1}) {type(error).__name__}: "
                      + str(error).strip().splitlines()[0][:300])
    print(f"| {length:,} | " + " | ".join(row) + " |", flush=True)
    for error in errors:
      print(error)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
