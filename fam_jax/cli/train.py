"""fam-train: fine-tune (or train) a FAM model on seqio tasks, t5x-style flags.

    fam-train --gin_file=train/tiny_passkey.gin --model_dir=/tmp/tiny
    fam-train --gin_file=train/smollm2_fam_lora.gin --model_dir=runs/smollm2 \\
        --gin.TrainConfig.train_steps=200

A run = a run gin (gin_configs/train/, which includes a model gin) + overrides
(`--gin.NAME=VALUE`, gin syntax: strings quoted, `--gin.TrainConfig.finetune="'full'"`).
Rerunning the same command resumes from the newest checkpoint in --model_dir;
SIGTERM or Ctrl-C saves a checkpoint and stops. Several processes (one per host)
each run the same command with --coordinator_address/--num_processes/--process_id
(or --multihost where JAX finds the cluster itself: SLURM, Cloud TPU).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Optional, Sequence

import gin

from fam_jax import gin_utils
from fam_jax.cli import errors


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="fam-train", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model_dir", required=True,
                 help="run directory: checkpoints, metrics, TensorBoard events")
  p.add_argument("--gin_file", action="append", default=[],
                 help="gin file(s), looked up as given, then in --gin_search_paths "
                 "and gin_configs/ (e.g. train/tiny_passkey.gin)")
  p.add_argument("--gin_search_paths", action="append", default=[],
                 help="directories (comma-separated or repeated) to find gin "
                 "files in")
  p.add_argument("--gin_bindings", action="append", default=[],
                 help="a gin binding; --gin.NAME=VALUE is the same")
  p.add_argument("--module_import", action="append", default=[],
                 help="Python module(s) to import first (e.g. to register tasks)")
  p.add_argument("--jax_cache_dir",
                 help="JAX's persistent compilation cache, so that a resumed "
                 "or repeated run skips compiling (default: <model_dir>/"
                 "jax_cache; 'none' disables it)")
  p.add_argument("--no_progress", action="store_true")
  p.add_argument("--coordinator_address",
                 help="multi-process: host:port of process 0")
  p.add_argument("--num_processes", type=int)
  p.add_argument("--process_id", type=int)
  p.add_argument("--multihost", action="store_true",
                 help="multi-process, with the cluster found by JAX")
  errors.add_debug_flag(p)
  return p


def split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(other args, bindings): `--gin.NAME=VALUE` -> 'NAME=VALUE'."""
  rest, bindings = [], []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      bindings.append(arg[len("--gin."):])
    else:
      rest.append(arg)
  return rest, bindings


def _compilation_cache(args) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  path = args.jax_cache_dir or os.path.join(args.model_dir, "jax_cache")
  if path != "none":
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(path))


def _initialize_distributed(args) -> None:
  if args.coordinator_address or args.num_processes or args.multihost:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize(coordinator_address=args.coordinator_address,
                               num_processes=args.num_processes,
                               process_id=args.process_id)


def _configure(args, bindings):
  """Parses gin; returns (TrainConfig, the gin text)."""
  from fam_jax.train import data  # pylint: disable=g-import-not-at-top
  from fam_jax.train.config import TrainConfig  # pylint: disable=g-import-not-at-top
  data.import_seqio()  # before modules that register tasks import it noisily
  for module in args.module_import:
    importlib.import_module(module)
  for paths in args.gin_search_paths:
    for path in paths.split(","):
      if path:
        gin.add_config_file_search_path(path)
  gin_utils.parse_gin(args.gin_file, list(args.gin_bindings) + bindings)
  return TrainConfig(), gin.config_str()


def main(argv: Optional[Sequence[str]] = None) -> int:
  return errors.run_main("fam-train", _main, argv)


def _main(argv: Sequence[str]) -> int:
  rest, bindings = split_gin_flags(argv)
  args = _parser().parse_args(rest)
  logging.basicConfig(level=logging.WARNING,
                      format="fam-train: %(levelname)s %(message)s")
  from fam_jax.train import data, loop  # pylint: disable=g-import-not-at-top
  _initialize_distributed(args)
  _compilation_cache(args)
  with errors.user_errors(ValueError, ImportError, OSError,
                          context="--gin_file/--gin"):
    train_cfg, gin_text = _configure(args, bindings)
  with errors.user_errors(loop.RunError, data.DataError, FileNotFoundError):
    summary = loop.train(args.model_dir, train_cfg, gin_text=gin_text,
                         progress=not args.no_progress)
  if summary["stopped_by"]:
    return 0
  print(f"fam-train: step {summary['step']} done in {summary['seconds']:.0f} s, "
        f"{summary['tokens_per_second']:,.0f} tokens/s; run in {args.model_dir}",
        file=sys.stderr)
  before = summary["eval_before"]
  for name, value in sorted(summary["eval"].items()):
    if name.endswith("/examples"):
      continue
    change = f"{before[name]:.4g} before training -> " if name in before else ""
    print(f"fam-train: {name}: {change}{value:.4g} at step {summary['step']}",
          file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
