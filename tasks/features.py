"""The feature converter of fam-jax LM tasks: seqio's LM converter that keeps each
task's float `loss_weights`.

seqio's `LMFeatureConverter` (what `DecoderFeatureConverter` runs for `targets`-only
tasks) derives binary loss weights from padding, which would drop the weights the
paper's recipe sets: 0 on prompts, 0.1 on the `[repeat random segment]:` target.
This converter packs and shifts exactly as seqio does and takes
`decoder_loss_weights` from the task instead, so fam-train and t5x
(`FamDecoderOnlyModel.FEATURE_CONVERTER_CLS`) see the same batches:

    decoder_input_tokens, decoder_target_tokens, decoder_loss_weights (float32)
    decoder_segment_ids, decoder_positions            (packed, the default)

Packing is seqio's own, so rows, segments and positions are exactly what
seqio's LM converter makes of the same `targets`: rows a task already packed and
padded to the full length (the paper's mask-free packing) stay one segment each,
padding (id 0) gets segment 0, and shorter examples are packed together. A task
without `loss_weights` is weighted 1 on every non-padding target.

seqio packs int32 features only, and takes a feature's length to be its number
of non-zero entries, as for tokens. So the weights travel through packing as
codes: the int32 bit pattern of the float32 weight plus one at every real token
(never zero, so a weight of 0 on a prompt token is not taken for padding) and 0
at padding (so they have the length of the tokens); they are decoded after. The
encoding is exact.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

_Spec = seqio.FeatureConverter.FeatureSpec
# The id the converters shift into position 0 of every decoder row (seqio's
# `bos_id`): a model trained on these rows has always seen it first, so a
# prompt decoded the way training presented it starts with it too.
DECODER_BOS = 0


class FamFeatureConverter(seqio.LMFeatureConverter):
  """`targets` + float `loss_weights` -> decoder-only model features."""

  TASK_FEATURES = {"targets": _Spec(dtype=tf.int32),
                   "loss_weights": _Spec(dtype=tf.int32)}  # see _encode
  MODEL_FEATURES = {
      "decoder_target_tokens": _Spec(dtype=tf.int32),
      "decoder_input_tokens": _Spec(dtype=tf.int32),
      "decoder_loss_weights": _Spec(dtype=tf.float32),
  }

  def __call__(self, ds: tf.data.Dataset,
               task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    if "loss_weights" not in ds.element_spec:
      ds = ds.map(lambda ex: {**ex, "loss_weights": tf.cast(
          seqio.non_padding_position(ex["targets"]), tf.float32)},
                  num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda ex: {
        "targets": ex["targets"],
        "loss_weights": _encode(ex["loss_weights"], ex["targets"])},
                num_parallel_calls=tf.data.AUTOTUNE)
    length = task_feature_lengths["targets"]
    return super().__call__(ds, {"targets": length, "loss_weights": length})

  def _convert_example(self, features: Mapping[str, tf.Tensor]
                       ) -> Mapping[str, tf.Tensor]:
    d = dict(super()._convert_example(features))
    d["decoder_loss_weights"] = _decode(features["loss_weights"])
    return d


def _encode(weights: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
  """float32 weights -> int32 codes: bit pattern + 1 at tokens, 0 at padding."""
  codes = tf.bitcast(tf.cast(weights, tf.float32), tf.int32) + 1
  return tf.where(targets != 0, codes, 0)


def _decode(codes: tf.Tensor) -> tf.Tensor:
  """The inverse of _encode; 0 (padding added by packing) decodes to 0.0."""
  return tf.where(codes == 0, 0.0, tf.bitcast(codes - 1, tf.float32))


class FamDecoderFeatureConverter(seqio.DecoderFeatureConverter):
  """seqio's decoder-only converter with `FamFeatureConverter` as its LM branch.

  `targets`-only tasks (training, perplexity) keep their float loss weights;
  `inputs` + `targets` tasks (PassKey, the long-context evaluations) go
  through seqio's prefix-LM converter, whose `decoder_causal_attention` marks
  the prompt that t5x's `predict_batch` prefills. The converter of
  `fam_jax.t5x.models.FamDecoderOnlyModel`.
  """

  def __init__(self, pack: bool = True, use_custom_packing_ops: bool = False,
               apply_length_check: bool = True, bos_id: int = DECODER_BOS,
               **kwargs):
    super().__init__(pack=pack, use_custom_packing_ops=use_custom_packing_ops,
                     apply_length_check=apply_length_check, bos_id=bos_id,
                     **kwargs)
    self.strictlm_feature_converter = FamFeatureConverter(
        pack=pack, use_custom_packing_ops=use_custom_packing_ops,
        apply_length_check=apply_length_check, bos_id=bos_id)
