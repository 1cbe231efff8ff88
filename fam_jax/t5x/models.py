"""FamDecoderOnlyModel: what t5x's train, eval and infer drive for a FAM model.

- Loss: `fam_jax.train.loss.weighted_cross_entropy`, the function fam-train
  optimises, normalised the same way (mean over the loss weights, plus the
  z-loss of TrainConfig): on the same batch and parameters the two trainers
  compute the same number.
- The paper's training tricks, from the run's `TrainConfig` (the same gin
  bindings fam-train reads, e.g. `train/paper_finetune.gin`), through the same
  function (`fam_jax.train.step.training_inputs`): random position offset (drawn
  from the step's `dropout_rng`, so training only; eval runs with offset 0) and
  random state passing. The FAM passed between steps lives in the train state:
  t5x keeps every variable collection besides `params` as `flax_mutables`,
  hands them to `loss_fn` and stores what it returns, and checkpoints them. The
  collection is `fam_state` ({fam [L, B, F, D], valid []}). Limits: it is one
  array for the whole batch, so `Trainer.num_microbatches` must stay None (t5x
  would hand each microbatch the full-batch FAM). A pretrained checkpoint
  without it (or without adapters) needs t5x's
  `RestoreCheckpointConfig.fallback_to_scratch` (t5x/finetune_paper.gin sets
  it; that start was not run here).
- LoRA (base frozen) is in the optimizer: `optim.fam_optimizer`.
- `predict_batch` (t5x's own, inherited): prefill then one token at a time
  through `module.FamT5xDecoder`, whose decode cache is a
  `streaming.StreamState`; sampling is t5x's `decoding.temperature_sample`
  (greedy with temperature 0). Memory does not grow with the prompt.
- `score_batch`: unpacked rows stream through the same state one block at a
  time (`streaming.score_traced`); packed rows (decoder_segment_ids) take the
  training path, which keeps segments apart.
- Feature converter: `tasks.features.FamDecoderFeatureConverter` (seqio's
  decoder converter whose LM branch keeps the tasks' float loss weights).
"""

from __future__ import annotations

from typing import Optional

import flax
import gin
import jax
import jax.numpy as jnp
from clu import metrics as clu_metrics
from flax.linen import partitioning as flax_partitioning
from t5x import decoding
from t5x import metrics as metrics_lib
from t5x import models as t5x_models

from fam_jax import streaming
from fam_jax.config import FamConfig
from fam_jax.t5x.module import FamT5xDecoder
from fam_jax.tasks.features import FamDecoderFeatureConverter
from fam_jax.train import init as train_init
from fam_jax.train import step as train_step
from fam_jax.train.config import TrainConfig
from fam_jax.train.loss import weighted_cross_entropy

FAM_STATE = "fam_state"  # the flax_mutables collection of random state passing


@gin.configurable
def fam_config(train_config: Optional[TrainConfig] = None) -> FamConfig:
  """The model of a t5x run: the gin-bound FamConfig with the run's
  TrainConfig.model_overrides (LoRA rank, attention, ...), as fam-train makes
  it (`fam_jax.train.init.model_config`)."""
  train_config = train_config or TrainConfig()
  if train_config.init_checkpoint is not None:
    raise ValueError(
        "TrainConfig.init_checkpoint is fam-train's starting point; a t5x run "
        "starts from random weights or a t5x checkpoint "
        "(INITIAL_CHECKPOINT_PATH): leave init_checkpoint unset")
  return train_init.model_config(train_config)


@gin.configurable
def fam_module(cfg: Optional[FamConfig] = None) -> FamT5xDecoder:
  return FamT5xDecoder(cfg if cfg is not None else fam_config())


@gin.configurable
def from_train_config(name: str, train_config: Optional[TrainConfig] = None):
  """A value of the run's TrainConfig for t5x's macros, so that a t5x gin
  restates nothing train/*.gin already says.

  Args:
    name: a TrainConfig field, or `task_feature_lengths` ({'targets':
      sequence_length}) or `decode_task` (the first of decode_tasks).
    train_config: default: the gin-bound TrainConfig.
  """
  train_config = train_config or TrainConfig()
  if name == "task_feature_lengths":
    return {"targets": train_config.sequence_length}
  if name == "decode_task":
    if not train_config.decode_tasks:
      raise ValueError("TrainConfig.decode_tasks is empty: name a task to decode "
                       "during fine-tuning (e.g. ['fam_passkey_4k'])")
    return train_config.decode_tasks[0]
  if not hasattr(train_config, name):
    raise ValueError(f"from_train_config: TrainConfig has no field {name!r}")
  return getattr(train_config, name)


def _unfreeze(tree):
  return flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree


class FamDecoderOnlyModel(t5x_models.DecoderOnlyModel):
  """t5x's DecoderOnlyModel for `FamT5xDecoder` (see the module doc)."""

  FEATURE_CONVERTER_CLS = FamDecoderFeatureConverter

  def __init__(self, module: FamT5xDecoder, vocabulary, optimizer_def,
               decode_fn=decoding.temperature_sample,
               train_config: Optional[TrainConfig] = None,
               feature_converter_cls=None):
    if not isinstance(module, FamT5xDecoder):
      raise TypeError("FamDecoderOnlyModel.module must be a FamT5xDecoder "
                      f"(fam_jax.t5x.models.fam_module()); got {type(module)}")
    self.train_config = train_config or TrainConfig()
    if vocabulary.vocab_size > module.cfg.vocab_size:
      raise ValueError(f"the vocabulary has {vocabulary.vocab_size} ids but "
                       f"FamConfig.vocab_size is {module.cfg.vocab_size}")
    super().__init__(module, vocabulary, optimizer_def, decode_fn=decode_fn,
                     feature_converter_cls=feature_converter_cls,
                     z_loss=self.train_config.z_loss)

  @property
  def cfg(self) -> FamConfig:
    return self.module.cfg

  @property
  def passes_state(self) -> bool:
    """Whether training carries the FAM between steps (random state passing)."""
    return bool(self.cfg.num_fam_tokens) and (
        self.train_config.state_passing_probability > 0)

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    """params, params_axes (FamLM's declarations) and, with random state
    passing, the `fam_state` collection with its axes."""
    variables = _unfreeze(super().get_initial_variables(rng, input_shapes,
                                                        input_types))
    if self.passes_state:
      cfg = self.cfg
      batch = input_shapes["decoder_input_tokens"][0]
      axes = flax_partitioning.AxisMetadata
      variables[FAM_STATE] = {
          "fam": jnp.zeros((cfg.num_layers, batch, cfg.num_fam_tokens,
                            cfg.d_model), cfg.compute_dtype),
          "valid": jnp.zeros((), bool)}
      variables[FAM_STATE + "_axes"] = {
          "fam_axes": axes(names=("layers", "batch", "fam", "embed")),
          "valid_axes": axes(names=())}
    return flax.core.freeze(variables)

  def _forward(self, params, batch, inputs: train_step.StepInputs,
               return_fam: bool):
    out = self.module.apply(
        {"params": params}, inputs.tokens, batch["decoder_target_tokens"],
        decoder_segment_ids=inputs.segment_ids,
        decoder_positions=inputs.positions, enable_dropout=False,
        position_offset=inputs.position_offset, fam_state=inputs.fam_state,
        fam_state_valid=inputs.fam_state_valid, return_fam_state=return_fam)
    return out if return_fam else (out, None)

  def loss_fn(self, params, batch, dropout_rng, flax_mutables=None):
    """fam-train's loss on a t5x batch.

    Training (dropout_rng given) applies the paper's randomisations with that
    key; `flax_mutables` carries the FAM of random state passing (see the
    module doc). Returns (loss, metrics), or (loss, (metrics, flax_mutables))
    when flax_mutables were given.
    """
    batch = dict(batch)
    batch.setdefault("decoder_segment_ids", None)
    batch.setdefault("decoder_positions", None)
    fam = valid = None
    if flax_mutables and FAM_STATE in flax_mutables:
      fam = flax_mutables[FAM_STATE]["fam"]
      valid = flax_mutables[FAM_STATE]["valid"]
    if dropout_rng is None:  # eval: no randomisation, the learned initial FAM
      inputs = train_step.StepInputs(batch["decoder_input_tokens"],
                                     batch["decoder_positions"],
                                     batch["decoder_segment_ids"], None, None,
                                     None)
    else:
      state = train_step.TrainState(step=None, params=None, opt_state=None,
                                    rng=None, fam=fam, fam_valid=valid)
      inputs = train_step.training_inputs(batch, state, dropout_rng, self.cfg,
                                          self.train_config)
    keep_fam = fam is not None and dropout_rng is not None
    logits, new_fam = self._forward(params, batch, inputs, keep_fam)
    sums = weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                  batch["decoder_loss_weights"],
                                  z_loss=self.train_config.z_loss)
    loss = sums.normalize()["loss"]
    metrics = self._metrics(logits, batch, loss, sums, inputs)
    if flax_mutables is None:
      return loss, metrics
    if keep_fam:
      flax_mutables = _unfreeze(flax_mutables)
      flax_mutables[FAM_STATE] = {
          "fam": jax.lax.stop_gradient(new_fam).astype(fam.dtype),
          "valid": jnp.ones((), bool)}
      flax_mutables = flax.core.freeze(flax_mutables)
    return loss, (metrics, flax_mutables)

  def eval_fn(self, params, batch, flax_mutables=None):
    """Loss and metrics without randomisation (the FAM is not passed)."""
    del flax_mutables
    return self.loss_fn(params, batch, None)

  def _metrics(self, logits, batch, loss, sums, inputs):
    targets = batch["decoder_target_tokens"]
    weights = batch["decoder_loss_weights"]
    segment_ids = ({"decoder": batch["decoder_segment_ids"]}
                   if batch["decoder_segment_ids"] is not None
                   else {"decoder": targets != 0})
    metrics = t5x_models.compute_base_metrics(
        logits=logits, targets=targets, mask=weights > 0, loss=loss,
        z_loss=None, segment_ids=segment_ids)
    metrics.update({
        "cross_entropy": clu_metrics.Average(total=sums.cross_entropy,
                                             count=sums.weight),
        "weighted_accuracy": clu_metrics.Average(total=sums.correct,
                                                 count=sums.weight),
        "loss_weight": metrics_lib.Sum(sums.weight)})
    if inputs.fam_state_valid is not None:
      metrics["fam_passed"] = metrics_lib.AveragePerStep(
          total=jnp.mean(inputs.fam_state_valid.astype(jnp.float32)))
    return metrics

  def score_batch(self, params, batch, return_intermediates: bool = False):
    """Sum over each row of weight · log p(target), streamed (see module doc)."""
    if "decoder_segment_ids" in batch:
      return super().score_batch(params, batch, return_intermediates)
    tokens = batch["decoder_input_tokens"]
    weights = batch["decoder_loss_weights"]
    state = streaming.init_state(_unfreeze(params), self.cfg, tokens.shape[0],
                                 capacity=tokens.shape[1])
    log_probs, _ = streaming.score_traced(_unfreeze(params), self.cfg, state,
                                          tokens, batch["decoder_target_tokens"])
    token_scores = log_probs * weights
    scores = token_scores.sum(-1)
    if not return_intermediates:
      return scores
    return scores, {"decoder": {
        "target_tokens": (batch["decoder_target_tokens"],),
        "loss_weights": (weights,), "token_scores": (token_scores,)}}
