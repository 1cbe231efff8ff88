"""Train-step time of fam, bswa and full attention at equal N and m.

    python benchmarks/train_step.py --model smollm2 --lengths 1024 --repeats 5
    python benchmarks/train_step.py --model d256 --lengths 2048,8192

Builds fam-train's real step (LoRA rank 64, Adafactor, random position offset,
random state passing for FAM) for each attention kind, then times the compiled
steps interleaved (fam, bswa, full, fam, ...) so that a busy machine slows all of
them alike, and prints the median seconds per step, tokens/s and the FAM/BSWA
ratio. Random weights: step time does not depend on their values.
"""

from __future__ import annotations

import argparse
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
}


def build(model: str, attention: str, length: int, batch: int, remat: str):
  cfg = FamConfig(**MODELS[model], attention=attention, lora_rank=64,
                  remat=remat)
  train_cfg = TrainConfig(batch_size=batch, sequence_length=length)
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
  state, metrics = step(state, batch_arrays)
  jax.block_until_ready(metrics)
  compile_seconds = time.perf_counter() - start
  return {"step": step, "state": state, "batch": batch_arrays,
          "compile": compile_seconds}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", choices=sorted(MODELS), default="d256")
  parser.add_argument("--lengths", default="2048")
  parser.add_argument("--attention", default="fam,bswa,full")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--remat", default="none")
  args = parser.parse_args()
  kinds = args.attention.split(",")
  print(f"model {args.model}, batch {args.batch}, remat {args.remat}, "
        f"{jax.devices()[0].device_kind} x{len(jax.devices())}")
  print("| tokens | attention | s/step (median) | tokens/s | compile s | "
        "vs bswa |")
  print("|---:|---|---:|---:|---:|---:|")
  for length in (int(x) for x in args.lengths.split(",")):
    runs = {k: build(args.model, k, length, args.batch, args.remat) for k in kinds}
    times = {k: [] for k in kinds}
    for _ in range(args.repeats):
      for kind in kinds:
        run = runs[kind]
        start = time.perf_counter()
        run["state"], metrics = run["step"](run["state"], run["batch"])
        jax.block_until_ready(metrics)
        times[kind].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    for kind in kinds:
      ratio = (f"{medians[kind] / medians['bswa']:.3f}" if "bswa" in medians
               else "-")
      print(f"| {length} | {kind} | {medians[kind]:.3f} | "
            f"{args.batch * length / medians[kind]:,.0f} | "
            f"{runs[kind]['compile']:.1f} | {ratio} |", flush=True)


if __name__ == "__main__":
  main()
