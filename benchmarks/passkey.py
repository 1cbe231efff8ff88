"""PassKey retrieval beyond the attention window: FAM against BSWA (the paper's
Figure 3a, at small scale).

    python benchmarks/passkey.py --out runs/passkey                  # CPU scale
    python benchmarks/passkey.py --scale smollm2 --gguf PATH \\
        --out runs/passkey_smollm2                                    # a GPU

Two models, identical but for the attention (`fam`, `bswa`: same N, m, layers,
steps, data, seed), are trained with fam-train, then asked for the pass key
after fillers from inside BSWA's receptive field ((layers x m + 1) x N tokens) to
far beyond it. Every answer is greedy-decoded through the streaming path
(constant memory). Evaluation examples come from their own seed and split
("test", seed 1) so that no key/filler draw is shared with training (seed 0).
Prints a Markdown table and writes <out>/passkey.png: accuracy against filler
length, one line per attention, the receptive field marked.

Scales:
- `cpu`: the tiny model of gin_configs/train/passkey_cpu.gin trained from
  scratch on byte-level rows, in two stages with the same steps for both
  attentions. Stage `copy` (fam_passkey_train_copy: the copy drill and PassKey
  rows with fillers of 0-64 tokens, inside every window) teaches the model to
  find and copy a key; stage `memory` (fillers of 64-768 tokens, mostly beyond
  BSWA's reach) can then only be solved by carrying the key in the FAM. A
  model that never learned to copy cannot show that its memory works. Copying
  appeared within 500 steps on this CPU (39 min for 1,012 steps of fam on 2
  cores) and after 1,000-3,000 in the probe's GPU runs
  (benchmarks/passkey_probe.py); 3,000 memory steps did not teach FAM to
  carry the key. The probe's recall drill did (benchmarks/gpu_checks.sh:
  100% at 9x the receptive field, BSWA 0%; README), evaluated here with
  --checkpoints.
- `smollm2`: SmolLM2-135M-Instruct from its GGUF (a path: the file may have
  arrived in parts and been joined), rank-64 LoRA, the paper's N=1024, m=3,
  F=64 (gin_configs/train/passkey_smollm2.gin), fam_passkey_train (fillers of
  2k-18k tokens), evaluated from 1k to 64k tokens of filler. Meant for a GPU.

A finished run in --out is read, not retrained (fam-train resumes), so the
script can be stopped and restarted. `--checkpoints fam=DIR,bswa=DIR` skips
training and evaluates checkpoints made elsewhere (e.g. passkey_probe.py
--export).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

SCALES = {
    "cpu": {
        "stages": [("copy", "train/passkey_cpu.gin", []),
                   ("memory", "train/passkey_cpu.gin",
                    ["--gin.STAGE_TASK='fam_passkey_train_far'",
                     "--gin.STAGE_LENGTH=1152", "--gin.STAGE_BATCH=8"])],
        "steps": (1000, 3000),
        "lengths": (32, 128, 1024, 2048, 4096),
        "max_new_tokens": 8,
    },
    "smollm2": {
        "stages": [("memory", "train/passkey_smollm2.gin", [])],
        "steps": (2000,),
        "lengths": (1024, 4096, 16384, 65536),
        "max_new_tokens": 12,
    },
}
GGUF_VOCABULARY = "fam_jax.tasks.get_vocabulary.gguf_file"
EVAL_SEED = 1
EVAL_SPLIT = "test"


def train(attention: str, args, scale: dict) -> tuple[str, float]:
  """Runs the scale's stages for one attention; returns (model dir, seconds).

  fam-train runs in this process (gin cleared between stages): one import of
  TensorFlow and seqio for all stages, and stages of one shape compile once."""
  import gin  # pylint: disable=g-import-not-at-top
  from fam_jax.cli import train as train_cli  # pylint: disable=g-import-not-at-top
  previous, seconds = None, 0.0
  for (stage, gin_file, extra), steps in zip(scale["stages"], args.steps):
    model_dir = os.path.join(args.out, attention, stage)
    argv = [f"--gin_file={gin_file}", f"--model_dir={model_dir}",
            f"--gin.ATTENTION='{attention}'",
            f"--gin.TrainConfig.train_steps={steps}", "--no_progress",
            *extra, *args.train_flags]
    if previous:
      argv.append(f"--gin.TrainConfig.init_checkpoint='{previous}'")
    if args.gguf:
      argv += [f"--gin.TrainConfig.init_checkpoint='gguf:{args.gguf}'",
               f"--gin.{GGUF_VOCABULARY}='{args.gguf}'"]
    print("fam-train " + " ".join(argv), flush=True)
    start = time.time()
    gin.clear_config()
    status = train_cli.main(argv)
    if status:
      raise SystemExit(f"fam-train stopped with status {status} ({model_dir})")
    seconds += time.time() - start
    previous = model_dir
  gin.clear_config()
  return previous, seconds


def register_eval_tasks(lengths: Sequence[int], examples: int) -> dict[int, str]:
  """One PassKey task per filler length L (fillers of [L - 32, L] tokens)."""
  import seqio  # pylint: disable=g-import-not-at-top
  from fam_jax.tasks import passkey  # pylint: disable=g-import-not-at-top
  names = {}
  for length in lengths:
    name = f"passkey_eval_seed{EVAL_SEED}_{length}_{examples}"
    if name not in seqio.TaskRegistry.names():
      low = max(0, length - passkey.EVAL_TOLERANCE)
      passkey.register_passkey_task(name, (low, length), seed=EVAL_SEED,
                                    num_examples=examples, splits=(EVAL_SPLIT,))
    names[length] = name
  return names


def evaluate(model_dir: str, tasks: dict[int, str], args, scale: dict
             ) -> dict[int, float]:
  """PassKey accuracy (%) per filler length, greedy through the stream."""
  from fam_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from fam_jax.train import evaluate as train_eval  # pylint: disable=g-import-not-at-top
  export = os.path.join(model_dir, "export")  # LoRA runs: the merged model
  params, cfg = checkpoint.load_checkpoint(
      export if os.path.isdir(export) else model_dir)
  accuracy = {}
  for length, task in tasks.items():
    start = time.time()
    metrics = train_eval.decode_metrics(
        params, cfg, task, EVAL_SPLIT, args.examples, scale["max_new_tokens"],
        batch_size=args.eval_batch)
    accuracy[length] = metrics["passkey_accuracy"]
    print(f"{model_dir}: filler {length}: {accuracy[length]:.0f}% "
          f"({time.time() - start:.0f} s)", flush=True)
  return accuracy


def receptive_field(model_dir: str) -> int:
  """BSWA's receptive field in tokens: (layers x m + 1) x N. A query sees
  its own block and, through each layer, m blocks further back
  (tests/test_model.py::test_bswa_receptive_field_is_exact); the paper's
  "about L x window" is layers x (m + 1) x N, which at m=0 would count
  layers x N where BSWA sees one block."""
  from fam_jax import checkpoint  # pylint: disable=g-import-not-at-top
  cfg = checkpoint.load_config(model_dir)
  return (cfg.num_layers * cfg.memory_segments + 1) * cfg.block_size


def plot(results: dict, field: int, title: str, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  for attention, accuracy in results.items():
    lengths = sorted(accuracy)
    ax.plot(lengths, [accuracy[n] for n in lengths], "o-", label=attention)
  ax.axvline(field, color="gray", linestyle="--",
             label=f"BSWA receptive field ({field} tokens)")
  ax.set_xscale("log", base=2)
  ax.set_ylim(-5, 105)
  ax.set_xlabel("filler length (tokens)")
  ax.set_ylabel("PassKey accuracy (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="runs/passkey")
  parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
  default_steps = ",".join(map(str, SCALES["cpu"]["steps"]))
  parser.add_argument("--steps", help="steps per stage, comma-separated "
                      f"(cpu: copy,memory, default {default_steps})")
  parser.add_argument("--lengths", help="filler lengths in tokens, "
                      "comma-separated")
  parser.add_argument("--examples", type=int, default=100,
                      help="PassKey examples per length")
  parser.add_argument("--eval-batch", type=int, default=25)
  parser.add_argument("--attention", default="fam,bswa")
  parser.add_argument("--gguf", help="smollm2 scale: the GGUF file's path")
  parser.add_argument("--checkpoints", metavar="ATTENTION=DIR,...",
                      help="evaluate these fam-jax checkpoints instead of "
                      "training (table columns in this order)")
  parser.add_argument("--train-flag", action="append", default=[],
                      dest="train_flags",
                      help="an extra fam-train flag for every stage, e.g. "
                      "--train-flag=--gin.TrainConfig.seed=1")
  args = parser.parse_args(argv)
  scale = SCALES[args.scale]
  args.steps = (tuple(int(s) for s in args.steps.split(",")) if args.steps
                else scale["steps"])
  if len(args.steps) != len(scale["stages"]):
    parser.error(f"--steps: {args.scale} has {len(scale['stages'])} stages "
                 f"({', '.join(s[0] for s in scale['stages'])}); got "
                 f"{args.steps}")
  if args.scale == "smollm2" and not args.gguf:
    parser.error("--gguf: the smollm2 scale needs the GGUF file's path")
  lengths = (tuple(int(n) for n in args.lengths.split(",")) if args.lengths
             else scale["lengths"])
  os.makedirs(args.out, exist_ok=True)
  if args.checkpoints:  # {attention: (dir, training seconds: not known)}
    trained = {}
    for item in args.checkpoints.split(","):
      name, _, directory = item.partition("=")
      if not directory or not os.path.isdir(directory):
        parser.error(f"--checkpoints: {item!r} is not ATTENTION=DIR of an "
                     "existing directory")
      trained[name] = (directory, None)
  else:
    trained = {a: train(a, args, scale) for a in args.attention.split(",")}

  from fam_jax.train import data  # pylint: disable=g-import-not-at-top
  data.import_seqio()
  if args.scale == "smollm2":
    from fam_jax import gin_utils  # pylint: disable=g-import-not-at-top
    gin_utils.parse_gin(["tasks/smollm2.gin"],  # the tasks' vocabulary
                        [f"{GGUF_VOCABULARY}='{args.gguf}'"])
  tasks = register_eval_tasks(lengths, args.examples)
  results = {a: evaluate(d, tasks, args, scale) for a, (d, _) in trained.items()}
  field = receptive_field(next(iter(trained.values()))[0])

  steps = ("given checkpoints" if args.checkpoints
           else "+".join(str(s) for s in args.steps) + " steps")
  print(f"\nPassKey accuracy (%), {args.examples} examples per length, greedy "
        f"through the stream; BSWA receptive field {field} tokens; "
        f"{steps}\n")
  print("| filler tokens | x receptive field | "
        + " | ".join(results) + " |")
  print("|---:|---:|" + "---:|" * len(results))
  for length in lengths:
    print(f"| {length:,} | {length / field:.1f} | "
          + " | ".join(f"{results[a][length]:.0f}" for a in results) + " |")
  if not args.checkpoints:
    print("\ntraining wall time: " + ", ".join(
        f"{a} {s / 60:.1f} min" for a, (_, s) in trained.items()))
  path = os.path.join(args.out, "passkey.png")
  plot(results, field, f"PassKey, {args.scale} scale, {steps}", path)
  with open(os.path.join(args.out, "passkey.json"), "w") as f:
    json.dump({"lengths": list(lengths), "receptive_field": field,
               "steps": None if args.checkpoints else list(args.steps),
               "checkpoints": {a: d for a, (d, _) in trained.items()},
               "examples": args.examples,
               "accuracy": results,
               "train_seconds": {a: s for a, (_, s) in trained.items()}}, f,
              indent=1)
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
