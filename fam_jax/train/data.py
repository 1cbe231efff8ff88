"""Batches for fam-train from seqio tasks and mixtures (needs the `data` extra).

Every process runs the same pipeline and reads the same global batches;
`global_batch` keeps, in each process, the rows its own devices hold. So the data
of a run does not depend on how many processes run it: 2 hosts train on what 1
host would, a run resumes on another number of hosts, every process sees the same
number of eval batches (none waits in a collective the others never reach), and
a task with fewer files than hosts still feeds every host. The price is that each
host reads and tokenizes the whole batch, small next to a fine-tuning step;
t5x's per-host sharded reading is the choice for pretraining-scale input.
The pipeline is deterministic given the seed, so the data position of a run is
the number of batches it has consumed: a resumed run rebuilds the pipeline and
skips that many batches (input-pipeline work only; no model computation is
repeated).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, Mapping

import jax
import numpy as np

from fam_jax.train.step import BATCH_FEATURES


class DataError(ValueError):
  """A dataset the run cannot use (unknown task, bad token ids, too small)."""


@contextlib.contextmanager
def _native_stderr_silenced():
  """Sends what native code writes to stderr (fd 2) to /dev/null meanwhile.

  TensorFlow's CUDA build, which seqio pulls in, logs from C++ while it is
  imported that it found no CUDA driver: four lines on every CPU machine, in
  front of everything fam-train prints. Python's own errors still show.
  """
  sys.stderr.flush()
  saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(null, 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)


def import_seqio():
  """seqio, with fam-jax's tasks registered; DataError without the extra."""
  try:
    with _native_stderr_silenced():
      import seqio  # pylint: disable=g-import-not-at-top
      import fam_jax.tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise DataError("fam-train reads seqio tasks: install the train extra "
                    "(pip install 'fam-jax[train]')") from e
  return seqio


def get_task(name: str):
  """The registered seqio task or mixture `name`; DataError naming the choices."""
  seqio = import_seqio()
  try:
    return seqio.get_mixture_or_task(name)
  except ValueError:
    known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    close = [k for k in known if name.split("_")[-1] in k][:8] or known[:8]
    raise DataError(f"unknown seqio task or mixture {name!r} (registered: "
                    f"{', '.join(close)}, ... {len(known)} in all)") from None


def output_vocabulary(name: str):
  """The vocabulary of the `targets` feature of task or mixture `name`."""
  return get_task(name).output_features["targets"].vocabulary


def lm_dataset(name: str, split: str, sequence_length: int, rows: int, *,
               shuffle: bool, seed: int, repeat: bool, skip_batches: int = 0):
  """A tf.data pipeline of numpy batches {feature: [rows, sequence_length]}.

  Args:
    name: task or mixture.
    split: its split.
    sequence_length: the `targets` length.
    rows: rows per batch (the global batch: every process reads all of it).
    shuffle, seed: seqio's shuffling and preprocessing seed.
    repeat: cycle forever (training) or read the split once (evaluation; the
      last batch is padded with weight-0 rows).
    skip_batches: batches to skip (the data position of a resumed run).
  """
  import_seqio()
  from fam_jax.tasks.features import DECODER_BOS, FamFeatureConverter  # pylint: disable=g-import-not-at-top
  task = get_task(name)
  lengths = {"targets": sequence_length}
  dataset = task.get_dataset(
      lengths, split=split, shuffle=shuffle, seed=seed,
      num_epochs=None if repeat else 1, use_cached=False)
  dataset = FamFeatureConverter(pack=True, bos_id=DECODER_BOS)(dataset, lengths)
  dataset = dataset.map(lambda ex: {k: ex[k] for k in BATCH_FEATURES})
  if repeat:
    dataset = dataset.batch(rows, drop_remainder=True)
  else:
    dataset = dataset.padded_batch(rows, drop_remainder=False)
  if skip_batches:
    dataset = dataset.skip(skip_batches)
  return dataset.prefetch(2)


def pad_rows(batch: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
  """Pads a short last batch with all-zero rows (weight 0, segment 0)."""
  have = next(iter(batch.values())).shape[0]
  return {k: np.concatenate([v, np.zeros((rows - have, *v.shape[1:]), v.dtype)])
          if have < rows else v for k, v in batch.items()}


def check_batch(batch: Mapping[str, np.ndarray], vocab_size: int, task: str,
                sequence_length: int) -> None:
  """DataError unless every token id is in [0, vocab_size) and shapes fit."""
  for key in BATCH_FEATURES:
    if key not in batch:
      raise DataError(f"task {task!r}: batch lacks {key!r}")
    if batch[key].shape[1:] != (sequence_length,):
      raise DataError(f"task {task!r}: {key} has shape {batch[key].shape}, "
                      f"expected [rows, {sequence_length}]")
  for key in ("decoder_input_tokens", "decoder_target_tokens"):
    ids = batch[key]
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
      row, col = np.argwhere(bad)[0]
      raise DataError(
          f"task {task!r}: token id {int(ids[row, col])} in {key} (row {row}, "
          f"position {col}) is outside the model's vocabulary [0, {vocab_size})"
          "; the task's vocabulary does not fit the model")


def global_batch(batch: Mapping[str, np.ndarray], sharding) -> dict[str, jax.Array]:
  """The global batch (the same in every process) -> arrays sharded over the
  mesh; each process places only the rows of its own devices."""
  return {k: jax.make_array_from_callback(v.shape, sharding,
                                          lambda index, v=v: v[index])
          for k, v in ((k, np.asarray(v)) for k, v in batch.items())}


def numpy_batches(dataset) -> Iterator[dict[str, np.ndarray]]:
  """The batches as numpy dicts; a failing input pipeline (a seqio assertion
  such as an example longer than a row) becomes a DataError."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  iterator = dataset.as_numpy_iterator()
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      raise DataError(e.message.strip().splitlines()[0]) from None
    yield dict(batch)
