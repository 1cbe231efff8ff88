"""PassKey at CPU scale without seqio: a quick probe of the training recipe.

    python benchmarks/passkey_probe.py --out runs/probe \\
        --stages induct_near:3000:384:32,far:2000:1152:8

`benchmarks/passkey.py` is the benchmark (fam-train, seqio tasks, greedy
decoding through the stream). This probe answers a narrower question fast, on
machines without TensorFlow (the lent GPU image has JAX but no seqio): does a
training recipe teach the from-scratch model of
gin_configs/train/passkey_cpu.gin to retrieve the key, and how many steps does
it take? It
- makes byte-level rows in numpy (ids = UTF-8 bytes + 3, EOS 1, padding 0, as
  seqio's ByteVocabulary), with the prompt text of tasks/passkey.py, read from
  that file's source (importing it needs seqio);
- trains with fam-train's own step (`make_train_step`: random position offset,
  random state passing, weighted loss), one fresh optimizer per stage as
  fam-train stages do;
- scores exact match as the teacher-forced argmax of every answer token through
  the training path: a greedy decode returns the key exactly when each of those
  argmaxes is right, and the training path equals the stream within 1e-5
  (tests/test_streaming.py);
- writes <out>/<attention>.npz (parameters) and <out>/probe.json; `--export`
  turns an npz into a fam-jax checkpoint that benchmarks/passkey.py's
  evaluation reads.

Stage kinds: `near` / `far` (PassKey rows, fillers of 0-64 / 64-768 tokens,
prompt weighted 0.1, as fam_passkey_train_near/_far), `pkLO-HI` (PassKey
rows with fillers of LO-HI tokens), `induct` (a random
string of 40-180 characters from digits, letters and space, a newline, the same
string again, the first copy weighted 0.1: every second-copy token rewards
copying from context), `induct_near` (the two mixed half and half),
`recallLO-HI` (a PassKey prompt whose question and answer repeat after
fillers of LO-HI tokens until the row is full: trained with
`--model memory_segments=0`, every answer past its block's start rewards
reading the key through the FAM).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from fam_jax import sharding
from fam_jax.config import FamConfig
from fam_jax.model import FamLM
from fam_jax.train import init as train_init
from fam_jax.train import step as train_step
from fam_jax.train.config import TrainConfig
from fam_jax.train.optimizer import (OptimizerConfig, learning_rate_schedule,
                                     make_optimizer)

PASSKEY_SOURCE = os.path.join(os.path.dirname(__file__), "..", "tasks",
                              "passkey.py")
EOS, BYTE_OFFSET = 1, 3
# Position 0 of every decoder input row, as seqio's converters shift it in
# (tasks/features.py DECODER_BOS; this script must not import seqio).
DECODER_BOS = 0
PROMPT_WEIGHT = 0.1
ALPHABET = np.frombuffer(b"0123456789abcdefghijklmnopqrstuvwxyz ", np.uint8)
# gin_configs/train/passkey_cpu.gin (over models/tiny.gin).
MODEL = dict(vocab_size=259, num_layers=2, d_model=128, num_heads=4,
             num_kv_heads=2, mlp_dim=256, block_size=64, memory_segments=3,
             fam_length=8)
# What --model may change in a model read with --init: its attention windows.
INIT_OVERRIDES = {"block_size", "memory_segments"}


def passkey_text() -> dict:
  """The prompt constants of tasks/passkey.py, without importing it."""
  names = {"TASK_DESCRIPTION", "KEY_LINE", "FILLER_SENTENCES", "QUESTION",
           "KEY_RANGE", "NEAR_FILLER_TOKENS", "FAR_FILLER_TOKENS"}
  tree = ast.parse(open(PASSKEY_SOURCE).read())
  return {t.id: ast.literal_eval(node.value) for node in tree.body
          if isinstance(node, ast.Assign) for t in node.targets
          if isinstance(t, ast.Name) and t.id in names}


def filler_range(kind: str) -> tuple[int, int]:
  if kind in ("near", "far"):
    return tuple(passkey_text()[f"{kind.upper()}_FILLER_TOKENS"])
  for prefix in ("pk", "recall"):
    if kind.startswith(prefix) and "-" in kind:
      low, high = kind[len(prefix):].split("-")
      return int(low), int(high)
  raise ValueError(f"unknown stage kind {kind!r}")


class Rows:
  """Endless byte-level training rows, and PassKey evaluation rows."""

  def __init__(self, seed: int):
    self.text = passkey_text()
    self.rng = np.random.default_rng(seed)
    sentences = self.text["FILLER_SENTENCES"]
    # Filler of n sentences: " ".join of the cycle; bytes(n) its length.
    self.lengths = np.cumsum([len(sentences[i % len(sentences)]) + 1
                              for i in range(20000)]) - 1

  def filler(self, budget: int) -> str:
    n = int(np.searchsorted(self.lengths, budget, side="right"))
    cycle = self.text["FILLER_SENTENCES"]
    return " ".join(cycle[i % len(cycle)] for i in range(n))

  def passkey(self, low: int, high: int) -> tuple[bytes, bytes]:
    t = self.text
    key = int(self.rng.integers(t["KEY_RANGE"][0], t["KEY_RANGE"][1] + 1))
    filler = self.filler(int(self.rng.integers(low, high + 1)))
    prompt = "\n".join([t["TASK_DESCRIPTION"], t["KEY_LINE"].format(key=key),
                        filler, t["QUESTION"]])
    return prompt.encode(), f" {key}".encode()

  def induct(self) -> tuple[bytes, bytes]:
    s = self.rng.choice(ALPHABET, int(self.rng.integers(40, 181))).tobytes()
    return s + b"\n", s

  def recall(self, low: int, high: int, length: int) -> list:
    """A PassKey prompt whose question comes back after every filler of
    low-high tokens until the row is full: one key, many answers. With m=0,
    an answer whose last mention of the key lies in an earlier block can only
    come through the FAM; one in the same block teaches the copying."""
    t = self.text
    key = int(self.rng.integers(t["KEY_RANGE"][0], t["KEY_RANGE"][1] + 1))
    pieces = [("\n".join([t["TASK_DESCRIPTION"],
                          t["KEY_LINE"].format(key=key)]).encode(), False)]
    used = len(pieces[0][0]) + 1  # and EOS
    while True:
      filler = self.filler(int(self.rng.integers(low, high + 1)))
      question = ("\n" + filler + "\n" + t["QUESTION"]).replace("\n\n", "\n")
      answer = f" {key}".encode()
      if used + len(question) + len(answer) > length:
        return pieces
      pieces += [(question.encode(), False), (answer, True)]
      used += len(question) + len(answer)

  def row(self, kind: str, length: int) -> list:
    """[(bytes, is answer)], EOS not included."""
    if kind == "induct_near":
      kind = "induct" if self.rng.random() < 0.5 else "near"
    if kind.startswith("recall"):
      return self.recall(*filler_range(kind), length)
    prompt, answer = (self.induct() if kind == "induct"
                      else self.passkey(*filler_range(kind)))
    return [(prompt, False), (answer, True)]

  def batch(self, kind: str, batch: int, length: int) -> dict:
    targets = np.zeros((batch, length), np.int32)
    weights = np.zeros((batch, length), np.float32)
    for b in range(batch):
      pieces = self.row(kind, length)
      ids = np.frombuffer(b"".join(p for p, _ in pieces), np.uint8
                          ).astype(np.int32) + BYTE_OFFSET
      ids = np.append(ids, EOS)
      if len(ids) > length:
        raise ValueError(f"a {kind} row of {len(ids)} tokens > {length}")
      targets[b, :len(ids)] = ids
      weights[b, :len(ids)] = PROMPT_WEIGHT
      start = 0
      for piece, is_answer in pieces:
        if is_answer:
          weights[b, start:start + len(piece)] = 1.0
        start += len(piece)
      if not kind.startswith("recall"):  # a recall row ends anywhere
        weights[b, len(ids) - 1] = 1.0  # EOS, as in the seqio tasks
    valid = (weights > 0).astype(np.int32)
    return {"decoder_target_tokens": targets,
            "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0)),
                                           constant_values=DECODER_BOS),
            "decoder_segment_ids": valid,
            "decoder_positions": np.tile(np.arange(length, dtype=np.int32),
                                         (batch, 1)) * valid,
            "decoder_loss_weights": weights}


def eval_rows(cfg: FamConfig, filler: int, examples: int, seed: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(input ids, segment ids, target ids, answer mask), [examples, T] each,
  of PassKey prompts + answers with fillers of [filler - 32, filler] tokens;
  T is the longest rounded up to whole blocks."""
  rows = Rows(seed)
  pairs = [rows.passkey(max(0, filler - 32), filler) for _ in range(examples)]
  longest = max(len(p) + len(a) for p, a in pairs)
  length = -(-longest // cfg.block_size) * cfg.block_size
  tokens = np.zeros((examples, length), np.int32)
  targets = np.zeros((examples, length), np.int32)
  answer = np.zeros((examples, length), bool)
  segments = np.zeros((examples, length), np.int32)
  for i, (p, a) in enumerate(pairs):
    ids = np.frombuffer(p + a, np.uint8).astype(np.int32) + BYTE_OFFSET
    tokens[i, 0] = DECODER_BOS  # inputs: targets shifted right
    tokens[i, 1:len(ids)] = ids[:-1]
    targets[i, :len(ids)] = ids
    answer[i, len(p):len(ids)] = True
    segments[i, :len(ids)] = 1
  return tokens, segments, targets, answer


def exact_match(logits, targets: np.ndarray, answer: np.ndarray) -> float:
  """% of rows whose every answer token is the argmax."""
  right = (np.asarray(jnp.argmax(logits, -1)) == targets) | ~answer
  return 100.0 * float(right.all(axis=1).mean())


def evaluate(params, cfg: FamConfig, filler: int, examples: int, seed: int,
             forward) -> float:
  """Exact-match accuracy (%) at fillers of [filler - 32, filler] tokens."""
  tokens, segments, targets, answer = eval_rows(cfg, filler, examples, seed)
  return exact_match(forward(params, tokens, segments), targets, answer)


def train(attention: str, stages, args) -> tuple[dict, FamConfig, list]:
  if args.init:  # the npz's model, with this run's attention and windows
    params, cfg = load_npz(args.init)
    # The windows (N, m) hold no parameters: a curriculum may change them.
    # So may the attention: a BSWA twin of a FAM run starts from the same
    # weights, less the summarization embeddings (a FAM twin of a BSWA run
    # gets fresh ones from the first stage's complete_params).
    cfg = dataclasses.replace(cfg, attention=attention, **args.model)
    wanted = traverse_util.flatten_dict(jax.eval_shape(
        lambda: FamLM(cfg).init(jax.random.PRNGKey(0),
                                jnp.zeros((1, 1), jnp.int32)))["params"])
    params = traverse_util.unflatten_dict(
        {k: v for k, v in traverse_util.flatten_dict(params).items()
         if k in wanted})
  else:
    params = None
    cfg = FamConfig(**{**MODEL, **args.model}, attention=attention)
  mesh = sharding.make_mesh()
  rows = Rows(args.seed)
  log = []
  forward = jax.jit(lambda p, t, s: FamLM(cfg).apply(
      {"params": p}, t, segment_ids=s))
  done = 0
  for number, (kind, steps, length, batch) in enumerate(stages):
    train_cfg = TrainConfig(batch_size=batch, sequence_length=length,
                            train_steps=steps, finetune="full",
                            seed=args.seed,
                            state_passing_probability=args.state_passing,
                            optimizer=OptimizerConfig(
                                name="adamw",
                                learning_rate=args.lr if number == 0 else (
                                    args.lr_later or args.lr),
                                warmup_steps=20))
    optimizer = make_optimizer(train_cfg.optimizer, steps)
    layout = train_init.make_layout(cfg, train_cfg, mesh, optimizer)
    params = train_init.complete_params(params, cfg, layout, args.seed)
    state = train_init.initial_state(params, cfg, train_cfg, optimizer, layout)
    mask = train_init.trainable_mask(params, train_cfg, cfg)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
      step_fn = jax.jit(train_step.make_train_step(
          cfg, train_cfg, optimizer, mask,
          learning_rate_schedule(train_cfg.optimizer, steps)), donate_argnums=0)
    start, losses = time.time(), []
    for i in range(1, steps + 1):
      state, metrics = step_fn(state, rows.batch(kind, batch, length))
      losses.append(metrics["loss"])
      if i % args.eval_every == 0 or i == steps:
        loss = float(np.mean(jax.device_get(losses)))
        losses = []
        params = jax.device_get(state.params)
        accuracy = {f: evaluate(params, cfg, f, args.eval_examples, 1, forward)
                    for f in args.watch}
        entry = {"attention": attention, "stage": kind, "step": done + i,
                 "loss": loss, "seconds": time.time() - start,
                 "accuracy": accuracy}
        log.append(entry)
        print(json.dumps(entry), flush=True)
        if not args.no_params:  # a stopped run keeps its last evaluation's
          save_npz(args.out, attention, params, cfg)
    done += steps
    params = jax.device_get(state.params)
  final = {f: evaluate(params, cfg, f, args.eval_examples, 1, forward)
           for f in args.lengths}
  log.append({"attention": attention, "final": final})
  print(json.dumps(log[-1]), flush=True)
  return params, cfg, log


def save_npz(out: str, attention: str, params, cfg: FamConfig) -> None:
  from fam_jax import checkpoint  # pylint: disable=g-import-not-at-top
  flat = {"/".join(k): np.asarray(v)
          for k, v in traverse_util.flatten_dict(params).items()}
  path = os.path.join(out, f"{attention}.npz")
  with open(path + ".tmp", "wb") as f:  # a run stopped mid-write keeps the old
    np.savez(f, __config__=json.dumps(checkpoint.config_to_dict(cfg)), **flat)
  os.replace(path + ".tmp", path)


def load_npz(npz: str) -> tuple[dict, FamConfig]:
  """(params, config) of a <out>/<attention>.npz this script wrote."""
  from fam_jax import checkpoint  # pylint: disable=g-import-not-at-top
  with np.load(npz) as f:
    flat = {tuple(k.split("/")): f[k] for k in f.files if k != "__config__"}
    cfg = checkpoint.config_from_dict(json.loads(str(f["__config__"])))
  return traverse_util.unflatten_dict(flat), cfg


def export(npz: str, out: str) -> None:
  from fam_jax import checkpoint  # pylint: disable=g-import-not-at-top
  params, cfg = load_npz(npz)
  checkpoint.save_checkpoint(out, params, cfg, prompt_prefix=(DECODER_BOS,))
  print(out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", default="runs/probe")
  parser.add_argument("--stages", default="induct_near:3000:384:32,"
                      "far:2000:1152:8",
                      help="kind:steps:length:batch, comma-separated; '' "
                      "with --init: evaluate only")
  parser.add_argument("--attention", default="fam,bswa")
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--lr-later", type=float, default=None,
                      help="learning rate of the stages after the first")
  parser.add_argument("--state-passing", type=float, default=0.8,
                      help="TrainConfig.state_passing_probability")
  parser.add_argument("--model", default="",
                      help="FamConfig overrides, e.g. fam_length=16,"
                      "first_fam_residual=initial; with --init only "
                      "block_size and memory_segments (a curriculum "
                      "may train with m=0, so that only the FAM reaches "
                      "past the block, and evaluate with m=3)")
  parser.add_argument("--watch", default="32,128",
                      help="filler lengths evaluated during training")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--eval-every", type=int, default=500)
  parser.add_argument("--eval-examples", type=int, default=100)
  parser.add_argument("--lengths", default="32,128,512,1024,2048,4096")
  parser.add_argument("--init", metavar="NPZ",
                      help="start from an earlier probe's <attention>.npz "
                      "(its model, with --attention's attention; one "
                      "attention per run)")
  parser.add_argument("--no-params", action="store_true",
                      help="write probe.json only")
  parser.add_argument("--export", nargs=2, metavar=("NPZ", "DIR"),
                      help="write NPZ's parameters as a fam-jax checkpoint")
  args = parser.parse_args(argv)
  if args.export:
    export(*args.export)
    return 0
  if args.init and "," in args.attention:
    parser.error("--init: give one --attention")
  stages = []
  for spec in filter(None, args.stages.split(",")):
    kind, steps, length, batch = spec.split(":")
    if kind not in ("induct", "induct_near"):
      try:
        filler_range(kind)
      except ValueError as e:
        parser.error(f"--stages: {e}")
    stages.append((kind, int(steps), int(length), int(batch)))
  args.lengths = [int(n) for n in args.lengths.split(",")]
  args.watch = [int(n) for n in args.watch.split(",")]
  args.model = {k: (v if not v.lstrip("-").isdigit() else int(v))
                for k, v in (kv.split("=") for kv in args.model.split(",")
                             if kv)}
  if args.init and set(args.model) - INIT_OVERRIDES:
    parser.error(f"--init with --model: only {sorted(INIT_OVERRIDES)} (they "
                 f"hold no parameters), not {sorted(set(args.model) - INIT_OVERRIDES)}")
  os.makedirs(args.out, exist_ok=True)
  logs = []
  for attention in args.attention.split(","):
    params, cfg, log = train(attention, stages, args)
    logs += log
    if not args.no_params:
      save_npz(args.out, attention, params, cfg)
    with open(os.path.join(args.out, "probe.json"), "w") as f:
      json.dump({"stages": stages, "device": jax.devices()[0].device_kind,
                 "args": {k: v for k, v in vars(args).items()
                          if k != "export"}, "log": logs}, f, indent=1)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
