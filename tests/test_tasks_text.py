"""Plain-text LM tasks: every token of every document, in order, in rows."""

import numpy as np
import seqio

import fam_jax.tasks  # noqa: F401  (registers the tasks)
from fam_jax.tasks import text

VOCAB = seqio.ByteVocabulary()


def test_classics_rows_hold_each_document_whole_and_in_order():
  length = 4096
  task = seqio.get_mixture_or_task("fam_text_classics")
  rows = list(task.get_dataset({"targets": length}, split="train",
                               shuffle=False, use_cached=False,
                               num_epochs=1).as_numpy_iterator())
  tokens, weights = [], []
  for row in rows:
    assert row["targets"].shape == row["loss_weights"].shape == (length,)
    used = row["loss_weights"] > 0
    np.testing.assert_array_equal(row["loss_weights"][used], 1.0)
    assert not row["targets"][~used].any()  # padding: id 0, weight 0
    tokens.append(row["targets"][used])
    weights.append(used.sum())
  expected = []
  for name in text.CLASSICS:
    with open(f"{text.DATA_DIR}/{name}", encoding="utf-8") as f:
      expected.append(VOCAB.encode(f.read()))
  # Rows never mix documents: the first document's last row is padded.
  first_rows = -(-len(expected[0]) // length)
  assert weights[first_rows - 1] == len(expected[0]) - (first_rows - 1) * length
  assert len(rows) == first_rows + -(-len(expected[1]) // length)
  np.testing.assert_array_equal(np.concatenate(tokens),
                                np.concatenate(expected))
  assert len(np.concatenate(expected)) > 250_000  # ~277k characters
