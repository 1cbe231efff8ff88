"""Train-step time of fam, bswa and full attention at equal N and m, and MFU.

    python benchmarks/train_step.py --model smollm2 --lengths 1024 --repeats 5
    python benchmarks/train_step.py --model d256 --lengths 2048,8192
    # GPU: the paper's 1B shape at 8k tokens in bfloat16, model TFLOP/s and MFU
    python benchmarks/train_step.py --model fam_1b --lengths 8192 \
        --dtype bfloat16 --finetune full --attention fam,bswa

Builds fam-train's real step (LoRA rank 64, Adafactor, random position offset,
random state passing for FAM) for each attention kind, then times the compiled
steps interleaved (fam, bswa, full, fam, ...) so that a busy machine slows all of
them alike, and prints the median seconds per step, tokens/s and the FAM/BSWA
ratio. Random weights: step time does not depend on their values.

Model FLOPs (`model_flops`) count the matrix products the step needs, not what
the hardware executes: no rematerialisation, no masked-out attention pairs. A
matmul costs 2 FLOPs per multiply-add in the forward pass and twice that in
the backward pass for every weight that trains (activation and weight
gradients), once for a frozen one (activation gradient only: LoRA's base
weights); attention pairs always cost three times their forward FLOPs. LoRA
adapters are not counted (at rank 64 on the 1B shape they would add about 8%
to the layers' FLOPs). MFU
divides model TFLOP/s by the chip's dense bf16 peak (`PEAK_TFLOPS`, or
--peak_tflops).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import jax
import numpy as np
from flax import linen as nn

from fam_jax import sharding
from fam_jax.config import FamConfig
from fam_jax.train import init as train_init
from fam_jax.train import step as train_step
from fam_jax.train.config import TrainConfig
from fam_jax.train.optimizer import learning_rate_schedule, make_optimizer

MODELS = {
    # SmolLM2-135M's shape, CPU-sized FAM windows (gin_configs/train/smollm2_fam_lora.gin).
    "smollm2": dict(vocab_size=49152, num_layers=30, d_model=576, num_heads=9,
                    num_kv_heads=3, mlp_dim=1536, rope_theta=100000.0,
                    block_size=128, memory_segments=1, fam_length=16),
    # The 4-layer d256 model of the speed issue, N=256, m=1, F=16.
    "d256": dict(vocab_size=259, num_layers=4, d_model=256, num_heads=4,
                 mlp_dim=1024, block_size=256, memory_segments=1, fam_length=16),
    # The paper's 1B shape (gin_configs/models/fam_1b.gin): N=1024, m=3, F=64.
    "fam_1b": dict(vocab_size=256000, num_layers=18, d_model=1536,
                   num_heads=12, mlp_dim=12288, block_size=1024,
                   memory_segments=3, fam_length=64),
}
# Dense bf16 peak TFLOP/s by jax device_kind (vendor data sheets, SXM parts).
PEAK_TFLOPS = {"NVIDIA H100 80GB HBM3": 989.4, "NVIDIA H200": 989.4,
               "TPU v5p": 459.0, "TPU v6 lite": 918.0, "TPU v5 lite": 197.0}


def attention_pairs(cfg: FamConfig, length: int) -> int:
  """(query, key) pairs one sequence attends to, per layer, masks respected."""
  if cfg.attention == "full":
    return length * (length + 1) // 2
  n, m, f = cfg.block_size, cfg.memory_segments, cfg.fam_length
  pairs = 0
  for block in range(length // n):
    pairs += n * (n + 1) // 2 + n * min(block, m) * n  # causal block + memory
    if cfg.attention == "fam":
      pairs += n * f + f * (n + f)  # block queries see the FAM; FAM update
  return pairs


def model_flops(cfg: FamConfig, length: int, batch: int, finetune: str) -> float:
  """Model FLOPs of one training step (forward and backward), see above."""
  d, hd = cfg.d_model, cfg.d_model // cfg.num_heads
  kv = cfg.num_kv_heads or cfg.num_heads
  layer_weights = (d * hd * (2 * cfg.num_heads + 2 * kv)
                   + 3 * d * cfg.mlp_dim)  # q, k, v, o; SwiGLU gate, up, down
  rows = length + (length // cfg.block_size * cfg.fam_length
                   if cfg.attention == "fam" else 0)  # FAM goes through layers
  weight_passes = 3 if finetune == "full" else 2
  matmul = 2 * batch * (rows * cfg.num_layers * layer_weights
                        + length * d * cfg.vocab_size)  # + output projection
  attention = (2 * 2 * batch * cfg.num_layers * cfg.num_heads * hd
               * attention_pairs(cfg, length))  # QK^T and PV
  return weight_passes * matmul + 3 * attention


def build(model: str, attention: str, length: int, batch: int, remat: str,
          dtype: str = "float32", finetune: str = "lora",
          overrides: dict | None = None):
  cfg = FamConfig(**{**MODELS[model], **(overrides or {})}, attention=attention,
                  lora_rank=64 if finetune == "lora" else 0,
                  remat=remat, dtype=dtype)
  train_cfg = TrainConfig(batch_size=batch, sequence_length=length,
                          finetune=finetune)
  optimizer = make_optimizer(train_cfg.optimizer, train_cfg.train_steps)
  mesh = sharding.make_mesh()
  layout = train_init.make_layout(cfg, train_cfg, mesh, optimizer)
  params = train_init.complete_params(None, cfg, layout, seed=0)
  state = train_init.initial_state(params, cfg, train_cfg, optimizer, layout)
  mask = train_init.trainable_mask(params, train_cfg, cfg)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
    step = jax.jit(train_step.make_train_step(
        cfg, train_cfg, optimizer, mask,
        learning_rate_schedule(train_cfg.optimizer, train_cfg.train_steps)),
                   donate_argnums=0)
  rng = np.random.default_rng(0)
  targets = rng.integers(1, cfg.vocab_size, (batch, length)).astype(np.int32)
  batch_arrays = {
      "decoder_target_tokens": targets,
      "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
      "decoder_segment_ids": np.ones_like(targets),
      "decoder_positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1)),
      "decoder_loss_weights": np.ones(targets.shape, np.float32)}
  start = time.perf_counter()
  compiled = step.lower(state, batch_arrays).compile()
  compile_seconds = time.perf_counter() - start
  state, metrics = compiled(state, batch_arrays)  # untimed first run
  jax.block_until_ready(metrics)
  return {"step": compiled, "state": state, "batch": batch_arrays,
          "compile": compile_seconds, "memory": planned_bytes(compiled),
          "flops": model_flops(cfg, length, batch, finetune)}


def planned_bytes(compiled) -> int:
  """Device memory XLA plans for one call: arguments + outputs + temporaries,
  less outputs that reuse donated arguments (the step's peak, known before
  it runs)."""
  stats = compiled.memory_analysis()
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def time_interleaved(runs: dict, repeats: int) -> dict[str, list[float]]:
  """Seconds of `repeats` steps of every run of `build`, the kinds taking
  turns (fam, bswa, full, fam, ...) so a busy machine slows them alike.

  Each run also gets `system_seconds`: the process's system CPU time in each
  step (page faults, zeroing fresh pages, reclaim under memory pressure), the
  part of a CPU step's time that is the operating system's, not XLA's.
  """
  times = {kind: [] for kind in runs}
  for _ in range(repeats):
    for kind, run in runs.items():
      system = resource.getrusage(resource.RUSAGE_SELF).ru_stime
      start = time.perf_counter()
      run["state"], metrics = run["step"](run["state"], run["batch"])
      jax.block_until_ready(metrics)
      times[kind].append(time.perf_counter() - start)
      run.setdefault("system_seconds", []).append(
          resource.getrusage(resource.RUSAGE_SELF).ru_stime - system)
  return times


def parse_overrides(text: str) -> dict:
  """'block_size=1024,fam_length=64' -> FamConfig overrides (ints, floats,
  True/False or strings)."""
  out = {}
  for item in filter(None, text.split(",")):
    key, _, value = item.partition("=")
    if value in ("True", "False"):
      out[key.strip()] = value == "True"
      continue
    for kind in (int, float):
      try:
        value = kind(value)
        break
      except ValueError:
        pass
    out[key.strip()] = value
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", choices=sorted(MODELS), default="d256")
  parser.add_argument("--lengths", default="2048")
  parser.add_argument("--attention", default="fam,bswa,full")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--remat", default="none")
  parser.add_argument("--dtype", default="float32",
                      help="compute dtype (parameters stay float32)")
  parser.add_argument("--finetune", choices=("lora", "full"), default="lora")
  parser.add_argument("--set", default="",
                      help="FamConfig overrides of the model, e.g. "
                      "block_size=1024,fam_length=64")
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="the chip's dense peak (default: PEAK_TFLOPS)")
  args = parser.parse_args()
  kinds = args.attention.split(",")
  overrides = parse_overrides(args.set)
  device = jax.devices()[0].device_kind
  peak = args.peak_tflops or PEAK_TFLOPS.get(device)
  print(f"model {args.model} {overrides or ''}, batch {args.batch}, remat {args.remat}, "
        f"{args.dtype}, finetune {args.finetune}, {device} "
        f"x{len(jax.devices())}, peak {peak or '?'} TFLOP/s")
  print("| tokens | attention | s/step (median) | tokens/s | compile s | "
        "vs bswa | model TFLOP/s | MFU |")
  print("|---:|---|---:|---:|---:|---:|---:|---:|")
  for length in (int(x) for x in args.lengths.split(",")):
    runs = {k: build(args.model, k, length, args.batch, args.remat,
                     args.dtype, args.finetune, overrides) for k in kinds}
    medians = {k: statistics.median(v)
               for k, v in time_interleaved(runs, args.repeats).items()}
    for kind in kinds:
      ratio = (f"{medians[kind] / medians['bswa']:.3f}" if "bswa" in medians
               else "-")
      tflops = runs[kind]["flops"] / medians[kind] / 1e12
      mfu = f"{tflops / peak:.1%}" if peak else "-"
      print(f"| {length} | {kind} | {medians[kind]:.3f} | "
            f"{args.batch * length / medians[kind]:,.0f} | "
            f"{runs[kind]['compile']:.1f} | {ratio} | {tflops:.1f} | {mfu} |",
            flush=True)


if __name__ == "__main__":
  main()
