"""Streaming speed against context length: prefill tokens/s, decode ms/token.

For each attention kind and context length, a fresh state is prefilled with
`length` random tokens (timed: prefill tokens/s), then tokens are decoded from
copies of that state two ways: by `generate` (the generation loop) and by
`decode_step` called from Python once per token. Every figure is the median of
--repeats runs, after an untimed run that compiles.

The script times whatever `fam_jax` Python imports, so an older commit is
timed by putting its checkout first on the path:

    git worktree add /tmp/fam-old 416f262
    PYTHONPATH=/tmp/fam-old python benchmarks/stream_decode.py --json old.json
    python benchmarks/stream_decode.py --json new.json
    python benchmarks/stream_decode.py --compare old.json new.json

SmolLM2-135M against transformers: `fam_bench.py smollm2` (its SMOLLM2
settings are below).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from fam_jax import FamConfig, FamLM, streaming
from fam_jax.generate import generate
from fam_jax.gin_utils import parse_gin

KINDS = {"fam": [1024, 4096, 16384, 65536], "bswa": [1024, 4096, 16384, 65536],
         "full": [1024, 4096]}


def median_seconds(run, repeats: int) -> float:
  """Median wall time of run(), or of what it returns if it times itself."""
  run()  # compiles
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    seconds = run()
    times.append(time.perf_counter() - start if seconds is None else seconds)
  return statistics.median(times)


def measure(params, cfg: FamConfig, length: int, decode_tokens: int,
            repeats: int, capacity: int = 0) -> dict:
  """Prefill tokens/s at `length`, then ms/token of decoding after it.

  capacity: of a full-attention KV cache (default: just enough).
  """
  tokens = np.random.default_rng(0).integers(3, cfg.vocab_size, (1, length))
  capacity = max(capacity, length + decode_tokens + 1)
  fresh = lambda: streaming.init_state(params, cfg, 1, capacity=capacity)
  filled = {}

  def prefill():
    logits, filled["state"] = streaming.prefill(params, cfg, fresh(),
                                                tokens[:, :-1])
    jax.block_until_ready(logits)

  prefill_s = median_seconds(prefill, repeats)
  copy = lambda: jax.tree_util.tree_map(jnp.copy, filled["state"])

  def by_generate():
    state = copy()
    jax.block_until_ready(state)
    return generate(params, cfg, state, tokens[:, -1:],
                    max_new_tokens=decode_tokens).decode_seconds

  def by_decode_step():
    state = copy()
    for t in range(decode_tokens):
      logits, state = streaming.decode_step(params, cfg, state, [3 + t % 50])
    jax.block_until_ready(logits)

  # Generation.decode_seconds: the decode phase (after the prompt's last
  # token), decode_tokens tokens sampled and all but the last fed back.
  generate_s = median_seconds(by_generate, repeats)
  step_s = median_seconds(by_decode_step, repeats)
  return dict(attention=cfg.attention, length=length,
              prefill_tokens_per_s=(length - 1) / prefill_s,
              generate_ms=1e3 * generate_s / decode_tokens,
              decode_step_ms=1e3 * step_s / decode_tokens)


# SmolLM2-135M's attention settings for fam_bench.py smollm2 (N=512, m=3, F=64).
SMOLLM2 = {"full": dict(attention="full"),
           "bswa": dict(attention="bswa", block_size=512, memory_segments=3),
           "fam": dict(attention="fam", block_size=512, memory_segments=3,
                       fam_length=64)}


def print_table(rows: list[dict]) -> None:
  print(f"{'attention':<24} {'context':>8} {'prefill tok/s':>14} "
        f"{'generate ms/tok':>16} {'decode_step ms/tok':>19}")
  for r in rows:
    print(f"{r['attention']:<24} {r['length']:>8,} "
          f"{r['prefill_tokens_per_s']:>14,.0f} {r['generate_ms']:>16.3f} "
          f"{r['decode_step_ms']:>19.3f}")


def compare(old_path: str, new_path: str) -> None:
  """Ratios new/old of matching rows (speed-ups: > 1 is faster)."""
  with open(old_path) as f:
    old = {(r["attention"], r["length"]): r for r in json.load(f)}
  with open(new_path) as f:
    new = json.load(f)
  print(f"{'attention':<24} {'context':>8} {'prefill speed-up':>17} "
        f"{'generate speed-up':>18} {'decode_step speed-up':>21}")
  for r in new:
    o = old.get((r["attention"], r["length"]))
    if o is None:
      continue
    print(f"{r['attention']:<24} {r['length']:>8,} "
          f"{r['prefill_tokens_per_s'] / o['prefill_tokens_per_s']:>17.2f} "
          f"{o['generate_ms'] / r['generate_ms']:>18.2f} "
          f"{o['decode_step_ms'] / r['decode_step_ms']:>21.2f}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--gin", default="models/tiny.gin")
  parser.add_argument("--gin-binding", action="append", default=[])
  parser.add_argument("--kinds", nargs="*", default=list(KINDS))
  parser.add_argument("--lengths", type=int, nargs="+",
                      help="context lengths (default per kind, see KINDS)")
  parser.add_argument("--decode-tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--capacity", type=int, default=0,
                      help="full attention's KV cache size (default: just "
                      "enough for the context and the decoded tokens)")
  parser.add_argument("--json", help="write the rows here")
  parser.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"))
  args = parser.parse_args()
  if args.compare:
    compare(*args.compare)
    return
  parse_gin([args.gin], args.gin_binding)
  rows = []
  for kind in args.kinds:
    cfg = FamConfig(attention=kind)
    params = jax.jit(FamLM(cfg).init)(jax.random.PRNGKey(0),
                                      jnp.zeros((1, 1), jnp.int32))["params"]
    for length in args.lengths or KINDS[kind]:
      rows.append(measure(params, cfg, length, args.decode_tokens, args.repeats,
                          args.capacity))
      print(json.dumps(rows[-1]), flush=True)
  print(f"fam_jax from {os.path.dirname(streaming.__file__)}")
  print(f"model: {args.gin} {args.gin_binding}; {jax.device_count()} "
        f"{jax.devices()[0].platform} device(s); medians of {args.repeats}")
  print_table(rows)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
