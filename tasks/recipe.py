"""The paper's training recipe as seqio preprocessors.

"Flan instruction data packed to 8.5k tokens without per-example attention
masks. Auxiliary target: 256 random consecutive tokens of the input are
repeated at the end after the prompt `[repeat random segment]:` with loss
weight 0.1." (PAPER.md, training setup.)

Feature contract of LM training tasks: `targets` (int32 ids) and
`loss_weights` (float32, same length). Weights are 0 on prompt (input) tokens,
1 on answer (target) tokens and their EOS, `REPEAT_SEGMENT_WEIGHT` on the
repeated segment, and 0 on the `[repeat random segment]:` prompt and on
padding (id 0). No segment ids or positions: examples in a row attend to one
another, as in the paper.
"""

from __future__ import annotations

from typing import Mapping, Optional

import gin
import seqio
import tensorflow as tf

from fam_jax.tasks import packing

PACKED_LENGTH = 8704  # 8.5k tokens.
REPEAT_SEGMENT_PROMPT = "[repeat random segment]:"
REPEAT_SEGMENT_LENGTH = 256
REPEAT_SEGMENT_WEIGHT = 0.1


def lm_output_features(vocabulary: seqio.Vocabulary
                       ) -> dict[str, seqio.Feature]:
  """`targets` ids (EOS added by `to_lm_example`) and float `loss_weights`."""
  return {
      "targets": seqio.Feature(vocabulary, add_eos=False),
      "loss_weights": seqio.Feature(
          seqio.PassThroughVocabulary(size=0), add_eos=False,
          dtype=tf.float32)}


def to_lm_example(dataset: tf.data.Dataset,
                  output_features: Mapping[str, seqio.Feature],
                  prompt_weight: float = 0.0) -> tf.data.Dataset:
  """Text `inputs`/`targets` -> one decoder-only sequence with loss weights.

  Args:
    dataset: examples with string `inputs` and `targets`.
    output_features: gives the vocabulary of `targets`.
    prompt_weight: the loss weight of the inputs' tokens (0: the answer alone
      is trained, as in instruction tuning).

  Returns:
    Examples `{targets: ids(inputs) + ids(targets) + [EOS], loss_weights}`,
    weights `prompt_weight` on the inputs' tokens and 1 on the rest.
  """
  vocab = output_features["targets"].vocabulary

  def convert(example):
    prompt = tf.cast(vocab.encode_tf(example["inputs"]), tf.int32)
    answer = tf.cast(vocab.encode_tf(example["targets"]), tf.int32)
    return {
        "targets": tf.concat([prompt, answer, [vocab.eos_id]], 0),
        "loss_weights": tf.concat([tf.fill(tf.shape(prompt), prompt_weight),
                                   tf.ones(tf.size(answer) + 1, tf.float32)],
                                  0)}

  return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def row_length(sequence_length: Optional[Mapping[str, int]]) -> int:
  """Tokens per training row: sequence_length["targets"], else 8.5k."""
  if sequence_length and sequence_length.get("targets"):
    return sequence_length["targets"]
  return PACKED_LENGTH


def check_length(dataset: tf.data.Dataset,
                 sequence_length: Optional[Mapping[str, int]],
                 task_name: str) -> tf.data.Dataset:
  """Stops with an error naming the task at an LM example longer than a row.

  For unpacked tasks, where cutting would drop the answer at the end.
  """
  limit = row_length(sequence_length)

  def check(example):
    with tf.control_dependencies([tf.debugging.assert_less_equal(
        tf.size(example["targets"]), limit,
        message=f"task {task_name}: an example is longer than the row "
                f"length {limit}; raise the targets sequence length")]):
      return {k: tf.identity(v) for k, v in example.items()}

  return dataset.map(check, num_parallel_calls=tf.data.AUTOTUNE)


def pad(dataset: tf.data.Dataset,
        sequence_length: Optional[Mapping[str, int]]) -> tf.data.Dataset:
  """Pads `targets` with 0 and `loss_weights` with 0.0 to the row length."""
  length = row_length(sequence_length)
  return dataset.map(lambda ex: packing.pad_lm_example(ex, length),
                     num_parallel_calls=tf.data.AUTOTUNE)


def repeat_segment_reserve(vocabulary: seqio.Vocabulary,
                           segment_length: int = REPEAT_SEGMENT_LENGTH) -> int:
  """Tokens the auxiliary target adds to a row: its prompt and its segment."""
  if segment_length == 0:
    return 0
  return len(vocabulary.encode(REPEAT_SEGMENT_PROMPT)) + segment_length


def pack(dataset: tf.data.Dataset,
         sequence_length: Optional[Mapping[str, int]],
         output_features: Mapping[str, seqio.Feature],
         segment_length: int = REPEAT_SEGMENT_LENGTH) -> tf.data.Dataset:
  """Packs LM examples into rows that leave room for the auxiliary target.

  Args:
    dataset: LM examples (`targets`, `loss_weights`).
    sequence_length: the row length is `sequence_length["targets"]` (8.5k
      without one).
    output_features: gives the vocabulary the prompt is measured in.
    segment_length: tokens the auxiliary target will repeat.

  Returns:
    Unpadded rows of at most row length - `repeat_segment_reserve(...)`
    tokens (see `packing.pack_lm_examples`).
  """
  length = row_length(sequence_length)
  reserve = repeat_segment_reserve(output_features["targets"].vocabulary,
                                   segment_length)
  if length <= reserve:
    raise ValueError(
        f"sequence_length['targets']={length} leaves no room for examples: the "
        f"auxiliary target takes {reserve} tokens (prompt "
        f"{REPEAT_SEGMENT_PROMPT!r} + {segment_length}-token segment)")
  return packing.pack_lm_examples(dataset, length - reserve)


def add_repeat_segment(dataset: tf.data.Dataset,
                       sequence_length: Optional[Mapping[str, int]],
                       output_features: Mapping[str, seqio.Feature],
                       segment_length: int = REPEAT_SEGMENT_LENGTH,
                       weight: float = REPEAT_SEGMENT_WEIGHT
                       ) -> tf.data.Dataset:
  """Appends the paper's auxiliary target to each row, then pads the row.

  After the row come the tokens of `[repeat random segment]:` (weight 0) and a
  copy of `segment_length` consecutive tokens of the row, starting at a
  uniformly random position (weight `weight`). The segment may start anywhere
  in the row, prompts and answers alike [choice: the paper says "of the
  input"]. A row shorter than `segment_length` is repeated whole [choice].
  Then `targets` is padded with 0 and `loss_weights` with 0.0 to the row
  length. `segment_length=0` only pads. Positions are drawn from seqio's
  seeds, so they follow `get_dataset(seed=...)`.

  Args:
    dataset: rows from `pack`.
    sequence_length: gives the row length.
    output_features: gives the vocabulary of the prompt.
    segment_length: tokens repeated (256 in the paper).
    weight: their loss weight (0.1 in the paper).

  Returns:
    Rows of exactly the row length.
  """
  length = row_length(sequence_length)
  if segment_length == 0:
    return pad(dataset, sequence_length)
  prompt = tf.constant(
      output_features["targets"].vocabulary.encode(REPEAT_SEGMENT_PROMPT),
      tf.int32)

  @seqio.map_over_dataset(num_seeds=1)
  def add(example, seed):
    tokens = example["targets"]
    size = tf.size(tokens)
    copied = tf.minimum(segment_length, size)
    start = tf.random.stateless_uniform([], seed, minval=0,
                                        maxval=size - copied + 1,
                                        dtype=tf.int32)
    with_segment = {
        "targets": tf.concat([tokens, prompt, tokens[start:start + copied]], 0),
        "loss_weights": tf.concat([
            example["loss_weights"], tf.zeros(tf.shape(prompt), tf.float32),
            tf.fill([copied], tf.constant(weight, tf.float32))], 0)}
    return packing.pad_lm_example(with_segment, length)

  return add(dataset)


@gin.configurable(module="fam_jax.tasks")
def auxiliary_target(segment_length: int = REPEAT_SEGMENT_LENGTH,
                     weight: float = REPEAT_SEGMENT_WEIGHT
                     ) -> tuple[int, float]:
  """Settings of the auxiliary target of packed tasks, e.g. in gin
  `auxiliary_target.segment_length = 0` (none). Read when a dataset is built,
  so they apply to tasks registered before gin was parsed.

  Args:
    segment_length: tokens repeated (256 in the paper; 0: no target).
    weight: their loss weight (0.1 in the paper).

  Returns:
    (segment_length, weight).
  """
  return segment_length, weight


def packed_recipe(segment_length: Optional[int] = None,
                  weight: Optional[float] = None) -> list:
  """Packing and the auxiliary target, for LM examples, as seqio preprocessors.

  Args:
    segment_length: tokens repeated by the auxiliary target (0: none); None
      takes `auxiliary_target()`'s (gin) when the dataset is built.
    weight: their loss weight; None likewise.

  Returns:
    [pack, add_repeat_segment] with these settings.
  """

  def settings():
    default_length, default_weight = auxiliary_target()
    return (default_length if segment_length is None else segment_length,
            default_weight if weight is None else weight)

  def pack_rows(dataset, sequence_length, output_features):
    return pack(dataset, sequence_length, output_features, settings()[0])

  def add_auxiliary(dataset, sequence_length, output_features):
    return add_repeat_segment(dataset, sequence_length, output_features,
                              *settings())

  return [pack_rows, add_auxiliary]
