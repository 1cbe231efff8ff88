"""Packing without masks and the auxiliary repeat target (tasks/packing.py,
tasks/recipe.py): invariants checked on random examples."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from fam_jax.tasks import packing
from fam_jax.tasks import recipe

VOCAB = seqio.ByteVocabulary()
FEATURES = recipe.lm_output_features(VOCAB)
PROMPT_IDS = VOCAB.encode(recipe.REPEAT_SEGMENT_PROMPT)


def lm_examples(lengths, seed=0):
  """Examples with distinct token ids (3, 4, ...) and 0/1 weights."""
  rng = np.random.default_rng(seed)
  examples, next_id = [], 3
  for n in lengths:
    tokens = np.arange(next_id, next_id + n, dtype=np.int32)
    next_id += n
    weights = (rng.random(n) < 0.5).astype(np.float32)
    examples.append({"targets": tokens, "loss_weights": weights})
  return examples


def as_dataset(examples):
  return tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={"targets": tf.TensorSpec([None], tf.int32),
                        "loss_weights": tf.TensorSpec([None], tf.float32)})


def concat(examples, key):
  return np.concatenate([e[key] for e in examples]) if examples else \
      np.zeros([0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packing_keeps_every_token_once_in_order(seed):
  rng = np.random.default_rng(seed)
  row = 50
  # Short, exact-fit, and longer-than-a-row examples (these split).
  lengths = list(rng.integers(1, 40, 30)) + [50, 50, 137, 1, 99]
  rng.shuffle(lengths)
  examples = lm_examples(lengths, seed)
  rows = list(packing.pack_lm_examples(as_dataset(examples), row)
              .as_numpy_iterator())
  np.testing.assert_array_equal(concat(rows, "targets"),
                                concat(examples, "targets"))
  np.testing.assert_array_equal(concat(rows, "loss_weights"),
                                concat(examples, "loss_weights"))
  assert all(len(r["targets"]) == len(r["loss_weights"]) <= row for r in rows)
  # Greedy: a row closes early only because the next example did not fit.
  starts = list(np.cumsum([0] + lengths[:-1]))
  position = 0
  for r in rows[:-1]:
    position += len(r["targets"])
    if len(r["targets"]) < row:
      assert position in starts
      assert len(r["targets"]) + lengths[starts.index(position)] > row


def test_an_example_that_fits_is_never_split():
  examples = lm_examples([30, 30, 20, 45, 5])
  rows = list(packing.pack_lm_examples(as_dataset(examples), 50)
              .as_numpy_iterator())
  assert [len(r["targets"]) for r in rows] == [30, 50, 50]


def test_packing_rejects_bad_row_length_and_missing_feature():
  with pytest.raises(ValueError, match="row_length=0"):
    packing.pack_lm_examples(as_dataset(lm_examples([3])), 0)
  ds = tf.data.Dataset.from_tensors({"targets": tf.constant([1, 2])})
  with pytest.raises(ValueError, match="needs feature 'loss_weights'"):
    packing.pack_lm_examples(ds, 10)


def run_recipe(examples, length, seed=7, segment_length=16, weight=0.1):
  prep = recipe.packed_recipe(segment_length, weight)
  ds = as_dataset(examples)
  with seqio.utils.map_seed_manager(seed):
    for fn in prep:
      ds = fn(ds, {"targets": length}, FEATURES)
  return list(ds.as_numpy_iterator())


def split_row(row, segment_length):
  """(content, content weights, segment) of a row with the auxiliary target."""
  targets, weights = row["targets"], row["loss_weights"]
  n_prompt = len(PROMPT_IDS)
  n_segment = int(np.sum(np.isclose(weights, 0.1)))
  # The row ends with prompt, segment, then padding (id 0, weight 0).
  used = len(targets) - int(np.argmax(targets[::-1] != 0))
  content_end = used - n_segment - n_prompt
  assert n_segment == min(segment_length, content_end)
  np.testing.assert_array_equal(targets[content_end:content_end + n_prompt],
                                PROMPT_IDS)
  return (targets[:content_end], weights[:content_end],
          targets[used - n_segment:used], used)


def test_recipe_rows_content_prompt_segment_padding():
  length, segment_length = 80, 16
  examples = lm_examples([10, 25, 7, 40, 3, 100, 12, 9], seed=3)
  rows = run_recipe(examples, length, segment_length=segment_length)
  contents = []
  for row in rows:
    targets, weights = row["targets"], row["loss_weights"]
    assert targets.shape == weights.shape == (length,)
    assert targets.dtype == np.int32 and weights.dtype == np.float32
    content, content_weights, segment, used = split_row(row, segment_length)
    # Room was reserved: content + prompt + segment fit in the row.
    assert len(content) <= length - len(PROMPT_IDS) - segment_length
    # The segment repeats consecutive tokens of this row's content.
    windows = np.lib.stride_tricks.sliding_window_view(content, len(segment))
    assert (windows == segment).all(axis=1).any()
    # Weights: 0.1 on the segment, 0 on the prompt and the padding.
    np.testing.assert_allclose(weights[used - len(segment):used], 0.1)
    assert not weights[len(content):used - len(segment)].any()
    assert not weights[used:].any() and not targets[used:].any()
    contents.append((content, content_weights))
  # No token lost or duplicated, weights carried along.
  np.testing.assert_array_equal(np.concatenate([c for c, _ in contents]),
                                concat(examples, "targets"))
  np.testing.assert_array_equal(np.concatenate([w for _, w in contents]),
                                concat(examples, "loss_weights"))


def test_recipe_positions_follow_the_seed():
  examples = lm_examples([60] * 6)
  first = run_recipe(examples, 100, seed=1)
  again = run_recipe(examples, 100, seed=1)
  other = run_recipe(examples, 100, seed=2)
  same = [np.array_equal(a["targets"], b["targets"])
          for a, b in zip(first, again)]
  differ = [np.array_equal(a["targets"], b["targets"])
            for a, b in zip(first, other)]
  assert all(same) and not all(differ)


def test_paper_defaults_and_short_rows():
  assert recipe.PACKED_LENGTH == 8704
  assert recipe.REPEAT_SEGMENT_LENGTH == 256
  assert recipe.REPEAT_SEGMENT_WEIGHT == pytest.approx(0.1)
  # Without sequence lengths, rows are 8.5k tokens; a row shorter than the
  # segment is repeated whole.
  rows = run_recipe(lm_examples([100]), None, segment_length=256)
  assert len(rows) == 1 and rows[0]["targets"].shape == (8704,)
  content, _, segment, _ = split_row(rows[0], 256)
  np.testing.assert_array_equal(segment, content)


def test_recipe_rejects_rows_too_short_for_the_auxiliary_target():
  with pytest.raises(ValueError, match="leaves no room for examples"):
    run_recipe(lm_examples([5]), 256 + len(PROMPT_IDS), segment_length=256)


def test_to_lm_example_weights_only_the_answer():
  ds = tf.data.Dataset.from_tensors({"inputs": "Q? ", "targets": "A!"})
  ex = next(recipe.to_lm_example(ds, FEATURES).as_numpy_iterator())
  assert VOCAB.decode(ex["targets"][:-1].tolist()) == "Q? A!"
  assert ex["targets"][-1] == VOCAB.eos_id
  np.testing.assert_array_equal(ex["loss_weights"], [0, 0, 0, 1, 1, 1])
