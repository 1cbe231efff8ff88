"""The training loop: `train(model_dir, train_cfg)` runs or resumes a fam-train run.

Everything that can be wrong with the request (an unknown task, a model_dir of
another model, a batch or mesh that does not divide, token ids outside the
vocabulary) is checked before anything compiles, and nothing in model_dir is
overwritten by a run that cannot start. A run killed at any moment resumes from
its newest checkpoint and continues as if it had never stopped: the checkpoint
holds the parameters, the optimizer state, the PRNG key, the FAM passed between
steps and the number of batches consumed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any, Optional

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import multihost_utils

from fam_jax import atomic, checkpoint, gin_utils, lora, sharding
from fam_jax.config import FamConfig
from fam_jax.train import data, evaluate, init, observe
from fam_jax.train import checkpoints as checkpoints_lib
from fam_jax.train.checkpoints import RunCheckpoints
from fam_jax.train.config import TrainConfig
from fam_jax.train.optimizer import learning_rate_schedule, make_optimizer
from fam_jax.text.loading import load_tokenizer
from fam_jax.text.tokenizer import ByteTokenizer
from fam_jax.train.step import make_eval_step, make_train_step

GIN_FILE = "train_config.gin"
EXPORT_DIR = "export"


class RunError(ValueError):
  """A run that cannot start as asked (the message says why and what to change)."""


def check_model_dir(model_dir: str, cfg: FamConfig) -> Optional[int]:
  """The newest checkpoint step of the run in model_dir, or None if it has none.

  A run is defined by its checkpoints: a directory without one (new, or killed
  before its first checkpoint) starts afresh. One with checkpoints must have been
  made for this model; RunError otherwise, before anything is written.
  """
  latest = checkpoints_lib.latest_step(model_dir)
  if latest is None:
    return None
  path = os.path.join(model_dir, checkpoint.CONFIG_FILE)
  if not os.path.exists(path):
    raise RunError(f"--model_dir {model_dir} has checkpoints but no "
                   f"{checkpoint.CONFIG_FILE}: not a fam-train run directory")
  saved = checkpoint.config_to_dict(checkpoint.load_config(model_dir))
  ours = checkpoint.config_to_dict(cfg)
  differ = [f"{k}: saved {saved.get(k)!r}, this run {ours.get(k)!r}"
            for k in sorted(set(saved) | set(ours)) if saved.get(k) != ours.get(k)]
  if differ:
    raise RunError(f"--model_dir {model_dir} holds a run of another model config "
                   f"({'; '.join(differ)}); use a new --model_dir")
  return latest


def _check_divisible(train_cfg: TrainConfig, mesh) -> None:
  ways = sharding.batch_parallelism(mesh)
  if train_cfg.microbatch_size % ways:
    raise RunError(
        f"TrainConfig.batch_size={train_cfg.batch_size} / "
        f"grad_accumulation_steps={train_cfg.grad_accumulation_steps} = "
        f"{train_cfg.microbatch_size} rows per microbatch do not divide over the "
        f"mesh's data × fsdp = {ways} batch shards")


def _prompt_prefix() -> tuple[int, ...]:
  """What every row data.py makes starts with: seqio's converter shifts
  DECODER_BOS into position 0 (checkpoint.py, prompt_prefix)."""
  from fam_jax.tasks.features import DECODER_BOS  # pylint: disable=g-import-not-at-top
  return (DECODER_BOS,)


def _write_run_files(model_dir: str, cfg: FamConfig, gin_text: str,
                     tokenizer) -> None:
  """The config (and tokenizer) beside the checkpoints: checkpoint.load_checkpoint
  and fam-generate read a run directory as a checkpoint."""
  os.makedirs(model_dir, exist_ok=True)
  checkpoint.save_config(model_dir, cfg, prompt_prefix=_prompt_prefix())
  tmp = os.path.join(model_dir, GIN_FILE + ".tmp")
  with open(tmp, "w") as f:
    f.write(gin_text)
  os.replace(tmp, os.path.join(model_dir, GIN_FILE))
  if tokenizer is not None:
    tokenizer.save(model_dir)


class _Interrupt:
  """SIGTERM/SIGINT -> save a checkpoint at the end of the current step, stop."""

  def __init__(self):
    self.signal: Optional[int] = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, _):
    self.signal = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def export(model_dir: str, params, cfg: FamConfig) -> str:
  """Writes <model_dir>/export in one step (atomic.writing): a fam-jax checkpoint
  with LoRA merged, the run's tokenizer and model.gin, as fam-convert writes.
  fam-generate --checkpoint reads it; a later export replaces it."""
  params = jax.device_get(params)
  if cfg.lora_rank:
    params, cfg = lora.merge_lora(params, cfg)
  directory = os.path.join(model_dir, EXPORT_DIR)
  tokenizer = load_tokenizer(model_dir)
  with atomic.writing(directory, overwrite=True, marker=checkpoint.CONFIG_FILE,
                      kind="a fam-jax checkpoint") as tmp:
    checkpoint.write_checkpoint(tmp, params, cfg,
                                prompt_prefix=_prompt_prefix())
    with open(os.path.join(tmp, gin_utils.MODEL_GIN_FILE), "w") as f:
      f.write(gin_utils.config_to_gin(cfg, header=f"Exported by fam-train from "
                                      f"{model_dir}"))
    if not isinstance(tokenizer, ByteTokenizer):
      tokenizer.save(tmp)
  return directory


def _starting_tokenizer(train_cfg: TrainConfig):
  """The tokenizer of the starting checkpoint, if it has one besides bytes."""
  source = train_cfg.init_checkpoint
  if source is None:
    return None
  if source.startswith(init.GGUF_PREFIX):
    from fam_jax.convert import gguf  # pylint: disable=g-import-not-at-top
    return gguf.GgufCheckpoint(source[len(init.GGUF_PREFIX):]).tokenizer()
  tokenizer = load_tokenizer(source)
  return None if isinstance(tokenizer, ByteTokenizer) else tokenizer


def train(model_dir: str, train_cfg: TrainConfig, *, gin_text: str = "",
          progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) the run in model_dir up to train_cfg.train_steps.

  Returns:
    {"step", "stopped_by" (None or the signal name), "eval" (the evaluation at
     the end), "eval_before" (the one before training), "tokens_per_second",
     "seconds"}.
  """
  started = time.perf_counter()
  model_dir = os.path.abspath(model_dir)
  main_process = jax.process_index() == 0
  # 1. Everything that can be checked without compiling.
  try:
    cfg = init.model_config(train_cfg)
  except ValueError as e:  # FamConfig validation, a GGUF or config it cannot read
    raise RunError(str(e)) from e
  latest = check_model_dir(model_dir, cfg)
  try:
    mesh = sharding.make_mesh(train_cfg.mesh_data, train_cfg.mesh_fsdp,
                              train_cfg.mesh_tensor)
  except ValueError as e:
    raise RunError(str(e)) from None
  _check_divisible(train_cfg, mesh)
  task_vocabulary = data.output_vocabulary(train_cfg.mixture_or_task_name)
  for name in train_cfg.eval_tasks + train_cfg.decode_tasks:
    data.get_task(name)
  if task_vocabulary.vocab_size > cfg.vocab_size:
    raise RunError(
        f"task {train_cfg.mixture_or_task_name!r} has a vocabulary of "
        f"{task_vocabulary.vocab_size} ids but the model only {cfg.vocab_size}")
  for path in train_cfg.perplexity_files:
    if not os.path.isfile(path):
      raise RunError(f"TrainConfig.perplexity_files: {path} is not a file")

  optimizer = make_optimizer(train_cfg.optimizer, train_cfg.train_steps)
  schedule = learning_rate_schedule(train_cfg.optimizer, train_cfg.train_steps)
  layout = init.make_layout(cfg, train_cfg, mesh, optimizer)
  checkpoints = RunCheckpoints(model_dir, train_cfg.keep_checkpoints)

  # 2. The first batch, checked before the step compiles.
  consumed = 0
  if latest is not None:
    state, meta = checkpoints.restore(latest, layout.abstract_state)
    consumed = int(meta["batches_consumed"])
  batches = data.numpy_batches(data.lm_dataset(
      train_cfg.mixture_or_task_name, "train", train_cfg.sequence_length,
      train_cfg.batch_size, shuffle=train_cfg.shuffle, seed=train_cfg.seed,
      repeat=True, skip_batches=consumed))
  first = next(batches, None)
  if first is None:
    raise data.DataError(
        f"task {train_cfg.mixture_or_task_name!r} has fewer train rows than "
        f"TrainConfig.batch_size={train_cfg.batch_size}")
  data.check_batch(first, cfg.vocab_size, train_cfg.mixture_or_task_name,
                   train_cfg.sequence_length)

  if latest is None:
    params = init.complete_params(init.starting_params(train_cfg, cfg), cfg,
                                  layout, train_cfg.seed)
    state = init.initial_state(params, cfg, train_cfg, optimizer, layout)
    if main_process:
      _write_run_files(model_dir, cfg, gin_text, _starting_tokenizer(train_cfg))
  log = observe.MetricsLog(model_dir, latest, enabled=main_process)

  mask = init.trainable_mask(layout.abstract_state.params, train_cfg, cfg)
  replicated = sharding.replicated(mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
    train_step = jax.jit(
        make_train_step(cfg, train_cfg, optimizer, mask, schedule),
        in_shardings=(layout.state, layout.batch),
        out_shardings=(layout.state, replicated), donate_argnums=0)
    eval_step = jax.jit(make_eval_step(cfg),
                        in_shardings=(layout.params, layout.batch),
                        out_shardings=replicated)

  def run_eval(step: int) -> dict[str, float]:
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
      results = evaluate.run_all(state.params, cfg, train_cfg, eval_step,
                                 layout.batch, task_vocabulary)
    if results:
      log.write(step, "eval", results)
      bar.message(f"eval at step {step}: " + ", ".join(
          f"{k} {v:.4g}" for k, v in sorted(results.items())))
    return results

  def save(step: int) -> None:
    checkpoints.save(step, state, {"step": step, "batches_consumed": consumed})

  step = int(state.step)
  bar = observe.Progress(step, train_cfg.train_steps,
                         enabled=progress and main_process,
                         messages=main_process)
  if step == 0 and (train_cfg.eval_tasks or train_cfg.decode_tasks
                    or train_cfg.perplexity_files):
    bar.message("evaluating before training (compiling first)")
    run_eval(0)  # before any training: the baseline
  bar.message(f"{'training' if step == 0 else f'resuming at step {step}'}: "
              "the first step compiles, then the progress line follows")
  evaluated = {}
  pending = None  # (step, metrics) of the step dispatched last
  stopped_by = None

  timer = {"last": None}  # when the previous step's results arrived

  def flush(pending):
    if pending is None:
      return
    done, metrics = pending
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    now = time.perf_counter()
    if timer["last"] is not None:  # steps back to back, no eval or save between
      metrics["step_seconds"] = now - timer["last"]
    timer["last"] = now
    log.write(done, "train", metrics,
              tensorboard=done % train_cfg.log_every == 0)
    bar.update(done, metrics["loss"], metrics["tokens"])
    if not np.isfinite(metrics["loss"]):
      raise RunError(f"the loss became {metrics['loss']} at step {done}")

  with _Interrupt() as interrupt:
    batch = first
    while step < train_cfg.train_steps:
      if batch is None:
        batch = next(batches)
        data.check_batch(batch, cfg.vocab_size, train_cfg.mixture_or_task_name,
                         train_cfg.sequence_length)
      state, metrics = train_step(state, data.global_batch(batch, layout.batch))
      consumed += 1
      step += 1
      batch = None
      flush(pending)  # the previous step's metrics, while this one runs
      pending = (step, metrics)
      last = step == train_cfg.train_steps
      if interrupt.signal is not None or last or step % train_cfg.checkpoint_every == 0 or (
          train_cfg.eval_every and step % train_cfg.eval_every == 0):
        flush(pending)
        pending = None
        if last or (train_cfg.eval_every and step % train_cfg.eval_every == 0):
          evaluated = run_eval(step)
        save(step)
        timer["last"] = None
      if interrupt.signal is not None:
        stopped_by = signal.Signals(interrupt.signal).name
        bar.message(f"{stopped_by}: stopped at step {step}; checkpoint saved, "
                    "rerun the same command to continue")
        break
  flush(pending)
  checkpoints.wait()
  checkpoints.close()
  if step == train_cfg.train_steps and stopped_by is None:
    if train_cfg.export_merged:
      # Every process takes part in gathering the params (sharded over
      # processes, they are not all on process 0); process 0 writes them.
      params = multihost_utils.process_allgather(state.params, tiled=True)
      if main_process:
        bar.message(f"exported {export(model_dir, params, cfg)}")
    if main_process:
      observe.plot_loss(model_dir)
  log.close()
  before = next((r for r in observe.read_metrics(model_dir)
                 if r["split"] == "eval" and r["step"] == 0), {})
  summary = {"step": step, "stopped_by": stopped_by, "eval": evaluated,
             "eval_before": {k: v for k, v in before.items()
                             if k not in ("step", "split")},
             "tokens_per_second": bar.tokens_per_second,
             "seconds": time.perf_counter() - started}
  if main_process:
    with open(os.path.join(model_dir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  logging.info("run finished: %s", summary)
  return summary
