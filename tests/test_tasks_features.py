"""FamFeatureConverter: seqio's LM batches, with the tasks' own float weights."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

import fam_jax.tasks  # noqa: F401  (registers the tasks)
from fam_jax.tasks.features import FamFeatureConverter

LENGTH = 16


def examples(rng, count, padded):
  """LM examples with ids in 1..99 and weights drawn from awkward floats."""
  out = []
  for _ in range(count):
    size = int(rng.integers(2, LENGTH + 1 if padded else 7))
    targets = rng.integers(1, 100, size).astype(np.int32)
    weights = rng.choice([0.0, 0.1, 1.0, 1e-8, 3.5, 2.0 / 3.0], size)
    if padded:  # A task that packed and padded its rows itself.
      targets = np.pad(targets, (0, LENGTH - size))
      weights = np.pad(weights, (0, LENGTH - size))
    out.append({"targets": targets, "loss_weights": weights.astype(np.float32)})
  return out


def dataset(rows, with_weights=True):
  keys = ["targets"] + (["loss_weights"] if with_weights else [])
  return tf.data.Dataset.from_generator(
      lambda: ({k: r[k] for k in keys} for r in rows),
      output_signature={"targets": tf.TensorSpec([None], tf.int32),
                        "loss_weights": tf.TensorSpec([None], tf.float32)}
      if with_weights else {"targets": tf.TensorSpec([None], tf.int32)})


def convert(converter, ds):
  return list(converter(ds, {"targets": LENGTH}).as_numpy_iterator())


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("pack", [True, False])
def test_same_batches_as_seqio_with_the_tasks_weights(pack, padded):
  rows = examples(np.random.default_rng(int(pack) * 2 + int(padded)), 40,
                  padded)
  ours = convert(FamFeatureConverter(pack=pack), dataset(rows))
  seqios = convert(seqio.LMFeatureConverter(pack=pack),
                   dataset(rows, with_weights=False))
  assert len(ours) == len(seqios)
  for a, b in zip(ours, seqios):
    assert set(a) == set(b)
    for key in b:
      if key != "decoder_loss_weights":
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a["decoder_loss_weights"].dtype == np.float32
  # Every example's weights arrive exactly, at its tokens, in order.
  got_tokens = np.concatenate([r["decoder_target_tokens"][
      r["decoder_target_tokens"] != 0] for r in ours])
  got_weights = np.concatenate([r["decoder_loss_weights"][
      r["decoder_target_tokens"] != 0] for r in ours])
  want_tokens = np.concatenate([r["targets"][r["targets"] != 0] for r in rows])
  want_weights = np.concatenate([r["loss_weights"][r["targets"] != 0]
                                 for r in rows])
  np.testing.assert_array_equal(got_tokens, want_tokens)
  np.testing.assert_array_equal(got_weights, want_weights)  # bit-exact
  for r in ours:
    assert not r["decoder_loss_weights"][r["decoder_target_tokens"] == 0].any()


def test_packing_marks_segments_and_padding():
  rows = [{"targets": np.array([3, 4, 5], np.int32),
           "loss_weights": np.array([0, .1, 1], np.float32)},
          {"targets": np.array([6, 7], np.int32),
           "loss_weights": np.array([0, .5], np.float32)}]
  (row,) = convert(FamFeatureConverter(), dataset(rows))
  np.testing.assert_array_equal(row["decoder_target_tokens"][:6],
                                [3, 4, 5, 6, 7, 0])
  np.testing.assert_array_equal(row["decoder_input_tokens"][:6],
                                [0, 3, 4, 0, 6, 0])
  np.testing.assert_array_equal(row["decoder_segment_ids"][:6],
                                [1, 1, 1, 2, 2, 0])
  np.testing.assert_array_equal(row["decoder_positions"][:6],
                                [0, 1, 2, 0, 1, 0])
  np.testing.assert_allclose(row["decoder_loss_weights"][:6],
                             [0, .1, 1, 0, .5, 0])


def test_without_task_weights_every_token_counts():
  rows = examples(np.random.default_rng(9), 10, padded=False)
  ours = convert(FamFeatureConverter(), dataset(rows, with_weights=False))
  seqios = convert(seqio.LMFeatureConverter(), dataset(rows, with_weights=False))
  for a, b in zip(ours, seqios):
    np.testing.assert_array_equal(a["decoder_loss_weights"],
                                  b["decoder_loss_weights"])


def test_passkey_rows_weight_only_the_answer():
  task = seqio.get_mixture_or_task("fam_passkey_train_short")
  ds = task.get_dataset({"targets": 1536}, split="validation", shuffle=False,
                        use_cached=False).take(6)
  segments = 0
  for row in FamFeatureConverter()(ds, {"targets": 1536}).as_numpy_iterator():
    for segment in range(1, row["decoder_segment_ids"].max() + 1):
      real = np.flatnonzero(row["decoder_segment_ids"] == segment)
      weighted = real[row["decoder_loss_weights"][real] > 0]
      assert 2 <= len(weighted) <= 7  # " {key}" and EOS
      assert weighted[-1] == real[-1]  # the EOS closes the example
      np.testing.assert_array_equal(row["decoder_positions"][real],
                                    np.arange(len(real)))
      segments += 1
  assert segments == 6  # every example once, several to a row
