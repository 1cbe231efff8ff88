"""The train and eval steps: pure functions of (TrainState, batch), jitted by `loop`.

A batch is what t5x's decoder-only models see (seqio's `DecoderFeatureConverter`
feature names), arrays [B, T]:

    decoder_input_tokens   the model's input ids (targets shifted right)
    decoder_target_tokens  the ids to predict
    decoder_segment_ids    packed example ids, 0 on padding
    decoder_positions      positions within each example
    decoder_loss_weights   float weights (0.1 on the paper's auxiliary target)

The step wires in the paper's two training-time randomisations (`randomization`):
random position offset (positions only: tokens, targets and weights are left as
they are) and random state passing, whose FAM lives in the TrainState so that it
survives checkpoints.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax import traverse_util

from fam_jax.config import FamConfig
from fam_jax.model import FamLM
from fam_jax.randomization import random_state_passing, sample_position_offset
from fam_jax.train.config import TrainConfig
from fam_jax.train.loss import LossSums, weighted_cross_entropy

Batch = Mapping[str, jax.Array]
BATCH_FEATURES = ("decoder_input_tokens", "decoder_target_tokens",
                  "decoder_segment_ids", "decoder_positions",
                  "decoder_loss_weights")


class TrainState(struct.PyTreeNode):
  """Everything that changes during training; a checkpoint saves all of it.

  Attributes:
    step: int32 [], steps done.
    params: the model's whole `params` tree (frozen and trainable leaves).
    opt_state: the optimizer's state of the trainable leaves only.
    rng: uint32 [2], the PRNG key of the next step.
    fam: [L, B, F, D] the final per-layer FAM of the last step (random state
      passing), or None when the model has no FAM or state passing is off.
    fam_valid: bool [], False until a step has produced `fam`.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  fam: Optional[jax.Array] = None
  fam_valid: Optional[jax.Array] = None


def split_params(params, mask) -> tuple[dict, dict]:
  """(trainable, frozen): the leaves of `params` where `mask` is True / False."""
  flat = traverse_util.flatten_dict(dict(params))
  flat_mask = traverse_util.flatten_dict(dict(mask))
  trainable = {k: v for k, v in flat.items() if flat_mask[k]}
  frozen = {k: v for k, v in flat.items() if not flat_mask[k]}
  return (traverse_util.unflatten_dict(trainable),
          traverse_util.unflatten_dict(frozen))


def merge_params(trainable, frozen) -> dict:
  """The inverse of split_params."""
  flat = traverse_util.flatten_dict(dict(frozen))
  flat.update(traverse_util.flatten_dict(dict(trainable)))
  return traverse_util.unflatten_dict(flat)


class StepInputs(NamedTuple):
  """What the model is called with besides its parameters."""

  tokens: jax.Array
  positions: jax.Array
  segment_ids: jax.Array
  position_offset: Optional[jax.Array]
  fam_state: Optional[jax.Array]
  fam_state_valid: Optional[jax.Array]


def training_inputs(batch: Batch, state: TrainState, rng: jax.Array,
                    model_cfg: FamConfig, train_cfg: TrainConfig) -> StepInputs:
  """The model's inputs for a training step, with the paper's randomisations.

  Random position offset changes `positions` only (through `position_offset`);
  random state passing chooses, per row, the previous step's final FAM or the
  learned initial FAM (fam_state_valid False).
  """
  offset_rng, passing_rng = jax.random.split(rng)
  batch_size = batch["decoder_input_tokens"].shape[0]
  offset = None
  if train_cfg.random_position_offset:
    offset = sample_position_offset(
        offset_rng, batch_size,
        zero_probability=train_cfg.zero_offset_probability)
  fam_state = fam_valid = None
  if state.fam is not None:
    fam_state, fam_valid = random_state_passing(
        passing_rng, state.fam,
        keep_probability=train_cfg.state_passing_probability,
        share_first_example=train_cfg.share_first_example)
    fam_valid = fam_valid & state.fam_valid
  return StepInputs(batch["decoder_input_tokens"], batch["decoder_positions"],
                    batch["decoder_segment_ids"], offset, fam_state, fam_valid)


def forward(params, inputs: StepInputs, model_cfg: FamConfig,
            return_fam: bool):
  """(logits [B, T, V], final FAM [L, B, F, D] or None)."""
  out = FamLM(model_cfg).apply(
      {"params": params}, inputs.tokens, positions=inputs.positions,
      segment_ids=inputs.segment_ids, position_offset=inputs.position_offset,
      fam_state=inputs.fam_state, fam_state_valid=inputs.fam_state_valid,
      return_fam_state=return_fam)
  return out if return_fam else (out, None)


def _microbatches(tree, count: int, batch_axis: int = 0):
  """Splits the batch axis into `count` microbatches, stacked first.

  Microbatch i holds rows i, i + count, i + 2·count, ...: strided, so that every
  device of a batch-sharded mesh holds its share of each microbatch.
  """
  def split(x):
    b = x.shape[batch_axis]
    x = x.reshape(*x.shape[:batch_axis], b // count, count,
                  *x.shape[batch_axis + 1:])
    return jnp.moveaxis(x, batch_axis + 1, 0)
  return jax.tree_util.tree_map(split, tree)


def _join_microbatches(x, batch_axis: int = 0):
  """The inverse of _microbatches for one stacked array."""
  x = jnp.moveaxis(x, 0, batch_axis + 1)
  return x.reshape(*x.shape[:batch_axis], -1, *x.shape[batch_axis + 2:])


def make_train_step(model_cfg: FamConfig, train_cfg: TrainConfig,
                    optimizer: optax.GradientTransformation, mask,
                    schedule: Callable[[jax.Array], jax.Array]):
  """The train step `(state, batch) -> (state, metrics)`, not yet jitted.

  Args:
    model_cfg: the model.
    train_cfg: the run (tricks, z-loss, gradient accumulation).
    optimizer: acts on the trainable leaves only.
    mask: params-shaped booleans, True where a leaf trains.
    schedule: the learning-rate schedule (for the metrics).
  """
  keeps_fam = bool(model_cfg.num_fam_tokens)
  accumulate = train_cfg.grad_accumulation_steps

  def loss_fn(trainable, frozen, batch, inputs):
    logits, fam = forward(merge_params(trainable, frozen), inputs, model_cfg,
                          keeps_fam)
    sums = weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                  batch["decoder_loss_weights"],
                                  z_loss=train_cfg.z_loss)
    return sums.loss, (sums, fam)

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def step(state: TrainState, batch: Batch):
    rng, step_rng = jax.random.split(state.rng)
    inputs = training_inputs(batch, state, step_rng, model_cfg, train_cfg)
    trainable, frozen = split_params(state.params, mask)
    if accumulate == 1:
      grads, (sums, fam) = grad_fn(trainable, frozen, batch, inputs)
    else:
      micro = _microbatches((batch, inputs._replace(fam_state=None)), accumulate)
      fam_micro = (None if inputs.fam_state is None
                   else _microbatches(inputs.fam_state, accumulate, batch_axis=1))

      def one(carry, xs):
        grads_sum, sums_sum = carry
        (mb, mb_inputs), mb_fam = xs
        g, (s, fam_out) = grad_fn(trainable, frozen, mb,
                                  mb_inputs._replace(fam_state=mb_fam))
        return ((jax.tree_util.tree_map(jnp.add, grads_sum, g), sums_sum + s),
                fam_out)

      zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)
      empty = LossSums(*(jnp.zeros((), jnp.float32) for _ in LossSums._fields))
      (grads, sums), fam = jax.lax.scan(one, (zeros, empty), (micro, fam_micro))
      fam = None if fam is None else _join_microbatches(fam, batch_axis=1)
    # The loss is a mean over the batch's weight: divide the summed gradient once.
    grads = jax.tree_util.tree_map(lambda g: g / jnp.maximum(sums.weight, 1e-8),
                                   grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics = sums.normalize()
    metrics.update(
        grad_norm=optax.tree.norm(grads),
        learning_rate=schedule(state.step),
        tokens=jnp.sum(batch["decoder_segment_ids"] != 0).astype(jnp.float32))
    if inputs.fam_state_valid is not None:
      metrics["fam_passed"] = jnp.mean(inputs.fam_state_valid.astype(jnp.float32))
    new_state = state.replace(step=state.step + 1,
                              params=merge_params(trainable, frozen),
                              opt_state=opt_state, rng=rng)
    if state.fam is not None:
      new_state = new_state.replace(
          fam=jax.lax.stop_gradient(fam).astype(state.fam.dtype),
          fam_valid=jnp.ones((), bool))
    return new_state, metrics

  return step


def make_eval_step(model_cfg: FamConfig):
  """`(params, batch) -> LossSums`: no randomisation, the learned initial FAM."""

  def step(params, batch: Batch) -> LossSums:
    inputs = StepInputs(batch["decoder_input_tokens"], batch["decoder_positions"],
                        batch["decoder_segment_ids"], None, None, None)
    logits, _ = forward(params, inputs, model_cfg, False)
    return weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                  batch["decoder_loss_weights"])

  return step
