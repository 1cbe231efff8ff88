"""Streaming prefill: peak memory and throughput from 10k to 1M tokens.

Each length runs in its own process (peak RSS is per process): the model is
compiled and warmed up on one block first, then the timed prefill streams
`length` random tokens through a fresh state. Prints a table and the ratios the
streaming issue asks for (peak RSS 1M vs 20k; tokens/s spread 10k..1M).

    python benchmarks/streaming_prefill.py [--gin models/tiny.gin] [--lengths ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_CHILD = """
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from fam_jax import FamConfig, FamLM, streaming
from fam_jax.gin_utils import parse_gin
parse_gin(sys.argv[2].split(","), [b for b in sys.argv[3:] if b])
def peak_rss_kib():  # VmHWM: ru_maxrss would include the parent's peak
  return int(next(line.split()[1] for line in open("/proc/self/status")
                  if line.startswith("VmHWM:")))
cfg = FamConfig()
params = jax.jit(FamLM(cfg).init)(jax.random.PRNGKey(0),
                                  jnp.zeros((1, 1), jnp.int32))["params"]
length = int(sys.argv[1])
tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (1, length))
warm = streaming.init_state(params, cfg, 1)
logits, _ = streaming.prefill(params, cfg, warm, tokens[:, :cfg.block_size + 1])
jax.block_until_ready(logits)
state = streaming.init_state(params, cfg, 1)
start = time.perf_counter()
logits, state = streaming.prefill(params, cfg, state, tokens)
jax.block_until_ready(logits)
seconds = time.perf_counter() - start
print(json.dumps(dict(length=length, seconds=seconds,
                      peak_rss_mib=peak_rss_kib() / 1024,
                      config=dict(attention=cfg.attention, block_size=cfg.block_size,
                                  memory_segments=cfg.memory_segments,
                                  fam_length=cfg.fam_length, d_model=cfg.d_model,
                                  num_layers=cfg.num_layers))))
"""


def measure(length: int, gin_file: str, bindings: list[str]) -> dict:
  result = subprocess.run([sys.executable, "-c", _CHILD, str(length), gin_file,
                           *bindings], capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  if result.returncode:
    raise SystemExit(result.stderr[-3000:])
  return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--gin", default="models/tiny.gin")
  parser.add_argument("--gin-binding", action="append", default=[])
  parser.add_argument("--lengths", type=int, nargs="+",
                      default=[10_000, 20_000, 100_000, 1_000_000])
  args = parser.parse_args()
  rows = [measure(n, args.gin, args.gin_binding) for n in args.lengths]
  print(f"model: {args.gin} {rows[0]['config']}")
  print(f"{'tokens':>10} {'seconds':>9} {'tokens/s':>10} {'peak RSS MiB':>13}")
  for r in rows:
    r["rate"] = r["length"] / r["seconds"]
    print(f"{r['length']:>10,} {r['seconds']:>9.2f} {r['rate']:>10,.0f} "
          f"{r['peak_rss_mib']:>13.1f}")
  by_length = {r["length"]: r for r in rows}
  if 20_000 in by_length and 1_000_000 in by_length:
    ratio = by_length[1_000_000]["peak_rss_mib"] / by_length[20_000]["peak_rss_mib"]
    print(f"peak RSS 1M / 20k tokens: {ratio:.3f} (target <= 1.10)")
  rates = [r["rate"] for r in rows]
  print(f"tokens/s spread: min/max = {min(rates) / max(rates):.3f}, "
        f"max deviation from the mean {max(abs(x / (sum(rates) / len(rates)) - 1) for x in rates):.1%}"
        " (target within 20%)")


if __name__ == "__main__":
  main()
