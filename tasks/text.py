"""Plain-text language-modelling tasks: whole documents cut into training rows.

A document (a text file) is tokenized whole and cut into consecutive rows of
`sequence_length["targets"]` tokens, each token weighted 1; a document's last
row is padded (id 0, weight 0). Rows never mix documents. This is the LM feature
contract of `recipe.py` (`targets`, `loss_weights`), so the rows go through
`features.FamFeatureConverter` like any other task.

Registered task:
- `fam_text_classics`: John Milton's *Areopagitica* and Shakespeare's *Hamlet*
  (`tasks/data/`, public domain, ~277k characters), every file in "train"; the
  corpus fam-jax fine-tunes SmolLM2 on before scoring Botchan (which it is not).
"""

from __future__ import annotations

import functools
import glob
import os
from typing import Mapping, Sequence, Union

import seqio
import tensorflow as tf

from fam_jax.tasks import recipe
from fam_jax.tasks import vocabularies
from fam_jax.tasks.sources import GeneratorSource

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CLASSICS = ("areopagitica.txt", "hamlet.txt")


def _documents(files: Mapping[str, Sequence[str]]):
  def read(split):
    paths = sorted(p for pattern in files[split] for p in glob.glob(pattern))
    if not paths:
      raise FileNotFoundError(f"no text file matches {list(files[split])} "
                              f"(split {split!r})")
    for path in paths:
      with open(path, encoding="utf-8") as f:
        yield {"text": f.read()}
  return read


def split_rows(dataset: tf.data.Dataset,
               sequence_length: Mapping[str, int]) -> tf.data.Dataset:
  """Tokenized documents `{targets}` -> rows `{targets, loss_weights}` of
  exactly the row length (`recipe.row_length`), the last one padded."""
  length = recipe.row_length(sequence_length)

  def rows(example):
    tokens = tf.cast(example["targets"], tf.int32)
    size = tf.size(tokens)
    count = (size + length - 1) // length
    pad = count * length - size
    return tf.data.Dataset.from_tensor_slices({
        "targets": tf.reshape(tf.pad(tokens, [[0, pad]]), [count, length]),
        "loss_weights": tf.reshape(
            tf.pad(tf.ones([size], tf.float32), [[0, pad]]), [count, length])})

  return dataset.flat_map(rows)


def register_text_task(name: str,
                       files: Mapping[str, Union[str, Sequence[str]]],
                       vocabulary: seqio.Vocabulary = vocabularies.CONFIGURED_VOCABULARY
                       ) -> seqio.Task:
  """Registers an LM task over text files.

  Args:
    name: the task name.
    files: split -> file glob(s); each file is one document.
    vocabulary: tokenizes the text (default: the gin-configured one).

  Returns:
    The task.
  """
  files = {split: [globs] if isinstance(globs, str) else list(globs)
           for split, globs in files.items()}
  source = GeneratorSource(_documents(files), splits=list(files),
                           output_signature=["text"])
  return seqio.TaskRegistry.add(
      name, source=source,
      output_features=recipe.lm_output_features(vocabulary),
      preprocessors=[
          functools.partial(seqio.preprocessors.rekey,
                            key_map={"targets": "text"}),
          seqio.preprocessors.tokenize,
          split_rows,
      ])


def register_all() -> None:
  register_text_task("fam_text_classics",
                     {"train": [os.path.join(DATA_DIR, f) for f in CLASSICS]})
