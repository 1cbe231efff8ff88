"""Packing LM examples into fixed-length rows without per-example masks.

The paper packs its Flan data into 8.5k-token sequences "without per-example
attention masks": examples simply follow one another in a row and attend across
their boundaries, so the packed rows carry only `targets` and `loss_weights` (no
segment ids, no positions).

Packing here is greedy and keeps examples whole where it can [choice; the paper
does not say how it packs]: examples are appended to the current row while they
fit; one that does not fit closes the row and starts the next. An example longer
than a row cannot be kept whole anyway: it fills the open row and continues in
as many following rows as it needs, and the next example may follow its last
piece. Every token of every example appears exactly once, in order, with its
loss weight. Rows are not padded here; `pad_lm_example` (or the auxiliary
target) pads them.
"""

from __future__ import annotations

import tensorflow as tf

_FEATURES = ("targets", "loss_weights")


def _rows(values: tf.Tensor, row_lengths: tf.Tensor) -> tf.data.Dataset:
  starts = tf.cumsum(row_lengths, exclusive=True)
  return tf.data.Dataset.range(tf.size(row_lengths, out_type=tf.int64)).map(
      lambda i: values[starts[i]:starts[i] + row_lengths[i]])


def pack_lm_examples(dataset: tf.data.Dataset, row_length: int
                     ) -> tf.data.Dataset:
  """Packs examples with `targets` [n] int32 and `loss_weights` [n] float32.

  Args:
    dataset: LM examples (other features are dropped).
    row_length: tokens per packed row.

  Returns:
    A dataset of unpadded rows `{targets, loss_weights}` of length at most
    `row_length`; only the last row of a finite dataset, and rows closed early
    because the next example did not fit, are shorter.
  """
  if row_length <= 0:
    raise ValueError(f"row_length={row_length}: must be positive")
  for k in _FEATURES:
    if k not in dataset.element_spec:
      raise ValueError(f"pack_lm_examples needs feature '{k}'; the examples "
                       f"have {sorted(dataset.element_spec)}")

  # The examples, then one empty example marking the end: it flushes the last
  # partial row (an endless dataset never reaches it).
  examples = dataset.map(lambda ex: (tf.cast(ex["targets"], tf.int32),
                                     tf.cast(ex["loss_weights"], tf.float32),
                                     tf.constant(False)))
  end = tf.data.Dataset.from_tensors((tf.zeros([0], tf.int32),
                                      tf.zeros([0], tf.float32),
                                      tf.constant(True)))

  def step(state, example):
    row_tokens, row_weights = state
    tokens, weights, is_end = example
    in_row = tf.size(row_tokens)
    # The open row cannot take this example, which would fit in a row of its
    # own: the open row is emitted as it is.
    close = ((in_row > 0) & (in_row + tf.size(tokens) > row_length)
             & (tf.size(tokens) <= row_length))
    closed_length = tf.where(close, in_row, 0)
    rest_tokens = tf.concat([row_tokens[closed_length:], tokens], 0)
    rest_weights = tf.concat([row_weights[closed_length:], weights], 0)
    num_full = tf.size(rest_tokens) // row_length
    used = num_full * row_length
    remainder = tf.size(rest_tokens) - used
    flush = is_end & (remainder > 0)
    row_lengths = tf.concat([
        tf.reshape(closed_length, [1])[:tf.cast(close, tf.int32)],
        tf.fill([num_full], row_length),
        tf.reshape(remainder, [1])[:tf.cast(flush, tf.int32)]], 0)
    emitted = tf.where(flush, tf.size(rest_tokens), used)
    out = (tf.concat([row_tokens[:closed_length], rest_tokens[:emitted]], 0),
           tf.concat([row_weights[:closed_length], rest_weights[:emitted]], 0),
           row_lengths)
    return (rest_tokens[emitted:], rest_weights[emitted:]), out

  initial = (tf.zeros([0], tf.int32), tf.zeros([0], tf.float32))
  packed = examples.concatenate(end).scan(initial, step)
  return packed.flat_map(
      lambda tokens, weights, lengths: tf.data.Dataset.zip(
          {"targets": _rows(tokens, lengths),
           "loss_weights": _rows(weights, lengths)}))


def pad_lm_example(example, length: int):
  """Pads `targets` with 0 and `loss_weights` with 0.0 to exactly `length`."""
  pad = length - tf.size(example["targets"])
  with tf.control_dependencies([tf.debugging.assert_non_negative(
      pad, message=f"LM example longer than its padded length {length}")]):
    return {"targets": tf.pad(example["targets"], [[0, pad]]),
            "loss_weights": tf.pad(example["loss_weights"], [[0, pad]])}
