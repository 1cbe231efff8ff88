"""Evaluations of a run: LM loss on eval tasks, decoding metrics, text perplexity.

- `lm_metrics`: the eval split of an LM task through the same feature converter
  and loss as training (no randomisation; the learned initial FAM) -> loss,
  perplexity, token accuracy.
- `decode_metrics`: an `inputs`/`targets` task (e.g. `fam_passkey_4k`) decoded
  greedily through the streaming path (`fam_jax.generate`, constant memory in the
  prompt length), post-processed and scored by the task's own metric functions.
- `text_perplexity`: a whole text file as one sequence (`fam_jax.evaluation`).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import numpy as np

from fam_jax import evaluation, streaming
from fam_jax.config import FamConfig
from fam_jax.generate import generate
from fam_jax.sampling import SamplingConfig
from fam_jax.train import data
from fam_jax.train.loss import LossSums


def lm_metrics(eval_step: Callable, params, task: str, split: str,
               sequence_length: int, batch_size: int, num_batches: int,
               batch_sharding, seed: int = 0) -> dict[str, float]:
  """Loss, perplexity and accuracy over up to `num_batches` batches of a split."""
  dataset = data.lm_dataset(task, split, sequence_length, batch_size,
                            shuffle=False, seed=seed, repeat=False)
  total = None
  for i, batch in enumerate(data.numpy_batches(dataset)):
    if i == num_batches:
      break
    batch = data.global_batch(data.pad_rows(batch, batch_size),
                              batch_sharding)
    sums = eval_step(params, batch)
    total = sums if total is None else total + sums
  if total is None:
    raise data.DataError(f"eval task {task!r} has no {split!r} rows")
  means = {k: float(v) for k, v in LossSums(*jax.device_get(total)).normalize().items()}
  means["perplexity"] = math.exp(min(means["cross_entropy"], 50.0))
  return means


def _decode(vocabulary, ids) -> str:
  return vocabulary.decode([int(t) for t in ids])


def decode_metrics(params, cfg: FamConfig, task_name: str, split: str,
                   num_examples: int, max_new_tokens: int,
                   batch_size: int = 8) -> dict[str, float]:
  """The task's predict metrics on `num_examples` greedy generations.

  Every process decodes the same examples (the streaming computation is
  replicated), so it also runs under a multi-process mesh.
  """
  task = data.get_task(task_name)
  if not hasattr(task, "predict_metric_fns"):
    raise data.DataError(f"decode task {task_name!r} is a mixture; name its tasks")
  vocabulary = task.output_features["targets"].vocabulary
  dataset = task.get_dataset(None, split=split, shuffle=False, use_cached=False,
                             num_epochs=1).take(num_examples)
  examples = list(dataset.as_numpy_iterator())
  if not examples:
    raise data.DataError(f"decode task {task_name!r} has no {split!r} examples")
  from fam_jax.tasks.features import DECODER_BOS  # pylint: disable=g-import-not-at-top
  predictions, targets = [], []
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    # As training's rows (and t5x's decoding) present it: the decoder's BOS,
    # then the inputs. Without it every position is one off from training's,
    # which moves the block boundaries: a FAM model with m=0 (docs/passkey/HISTORY.md)
    # answered 11 / 17 / 10% of PassKey prompts at fillers 32 / 128 / 256
    # without it, 32 / 34 / 20% with it.
    lengths = [1 + len(ex["inputs"]) for ex in chunk]
    prompts = np.zeros((len(chunk), max(lengths)), np.int32)
    for row, ex in enumerate(chunk):
      prompts[row, 0] = DECODER_BOS
      prompts[row, 1:lengths[row]] = ex["inputs"]
    capacity = None if cfg.is_blockwise else max(lengths) + max_new_tokens
    state = streaming.init_state(params, cfg, len(chunk), capacity=capacity)
    result = generate(params, cfg, state, prompts, lengths=lengths,
                      max_new_tokens=max_new_tokens, sampling=SamplingConfig(),
                      stop_tokens=[vocabulary.eos_id])
    for ex, tokens in zip(chunk, result.tokens):
      predictions.append(task.postprocess_fn(_decode(vocabulary, tokens),
                                             example=ex, is_target=False))
      target = ex.get("targets_pretokenized")
      target = (target.decode("utf-8") if target is not None
                else _decode(vocabulary, ex["targets"]))
      targets.append(task.postprocess_fn(target, example=ex, is_target=True))
  metrics = {}
  for metric_fn in task.predict_metric_fns:
    for name, value in metric_fn(targets, predictions).items():
      metrics[name] = float(getattr(value, "value", value))
  metrics["examples"] = float(len(examples))
  return metrics


def text_perplexity(params, cfg: FamConfig, path: str, vocabulary,
                    streaming_path: bool = False) -> float:
  """Perplexity of a whole text file, one sequence, in `vocabulary`'s ids."""
  with open(path, encoding="utf-8") as f:
    ids = vocabulary.encode(f.read())
  nll = evaluation.token_nll(params, cfg, np.asarray(ids, np.int32),
                             streaming_path=streaming_path)
  return float(np.exp(np.mean(nll)))


def run_all(params, cfg: FamConfig, train_cfg, eval_step, batch_sharding,
            vocabulary: Optional[object]) -> dict[str, float]:
  """Every evaluation the TrainConfig asks for, as flat 'task/metric' keys."""
  out = {}
  for task in train_cfg.eval_tasks:
    for k, v in lm_metrics(eval_step, params, task, train_cfg.eval_split,
                           train_cfg.sequence_length, train_cfg.batch_size,
                           train_cfg.eval_batches, batch_sharding,
                           train_cfg.seed).items():
      out[f"{task}/{k}"] = v
  for task in train_cfg.decode_tasks:
    for k, v in decode_metrics(params, cfg, task, train_cfg.eval_split,
                               train_cfg.decode_examples,
                               train_cfg.decode_max_new_tokens).items():
      out[f"{task}/{k}"] = v
  for path in train_cfg.perplexity_files:
    name = path.rsplit("/", 1)[-1]
    out[f"{name}/perplexity"] = text_perplexity(params, cfg, path, vocabulary)
  return out
