"""Optimizers of fam-train: the paper's Adafactor, AdamW, clipping, schedules.

The paper fine-tunes with Adafactor (β1 0.9, β2 0.99) at a constant learning rate
(1e-4 for 1B, 3e-3 for 8B/24B). optax's `adafactor` decays its second moment with
the original power schedule 1 - t^-0.8; to get the paper's constant β2 we chain the
same optax building blocks with a constant, bias-corrected decay instead:

    factored second moment (β2) -> clip update RMS -> [× parameter RMS] ->
    learning rate -> momentum (β1) -> descend

Only the trainable parameters (see `fam_jax.lora`) are handed to the optimizer:
the frozen base model has no optimizer state at all.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import gin
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adafactor", "adamw")
SCHEDULES = ("constant", "linear", "cosine")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The optimizer of a fam-train run.

  Attributes:
    name: `adafactor` (the paper's) or `adamw`.
    learning_rate: peak learning rate (paper: 1e-4 for 1B, 3e-3 for 8B/24B).
    schedule: after warm-up, `constant` (the paper's), or a `linear` / `cosine`
      decay to 0 at the last step.
    warmup_steps: linear warm-up from 0.
    beta1: momentum (Adafactor) or Adam's β1; paper 0.9. 0 disables Adafactor's
      momentum (saves one copy of the trainable parameters).
    beta2: second-moment decay; paper 0.99.
    epsilon: added to the mean square (Adafactor) or the root-mean-square
      (AdamW); None: each optimizer's usual value (1e-30, 1e-8).
    weight_decay: decoupled weight decay (AdamW; Adafactor: added to the update).
    clip_update_rms: Adafactor's update clipping threshold (RMS of the scaled
      update); None disables it.
    multiply_by_parameter_scale: Adafactor's relative step size (× parameter
      RMS). Off by default: the paper's learning rates are absolute, and LoRA's
      B factors start at zero.
    factored: Adafactor's factored second moments (row and column statistics for
      matrices of at least `min_dim_size_to_factor` in two dimensions).
    min_dim_size_to_factor: see `factored`.
    grad_clip_norm: clip the gradient to this global norm first; None disables.
  """

  name: str = "adafactor"
  learning_rate: float = 1e-4
  schedule: str = "constant"
  warmup_steps: int = 0
  beta1: float = 0.9
  beta2: float = 0.99
  epsilon: Optional[float] = None
  weight_decay: float = 0.0
  clip_update_rms: Optional[float] = 1.0
  multiply_by_parameter_scale: bool = False
  factored: bool = True
  min_dim_size_to_factor: int = 128
  grad_clip_norm: Optional[float] = 1.0

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      _fail("name", self.name, f"one of {OPTIMIZERS}")
    if self.schedule not in SCHEDULES:
      _fail("schedule", self.schedule, f"one of {SCHEDULES}")
    if not self.learning_rate > 0:
      _fail("learning_rate", self.learning_rate, "a number > 0")
    if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
      _fail("warmup_steps", self.warmup_steps, "an integer >= 0")
    for name in ("beta1", "beta2"):
      if not 0 <= getattr(self, name) < 1:
        _fail(name, getattr(self, name), "a number in [0, 1)")
    if self.clip_update_rms is not None and not self.clip_update_rms >= 1:
      _fail("clip_update_rms", self.clip_update_rms, "None or a number >= 1")
    if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
      _fail("grad_clip_norm", self.grad_clip_norm, "None or a number > 0")


def _fail(name, value, allowed):
  raise ValueError(f"OptimizerConfig.{name} must be {allowed}; got {value!r}")


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
  """Warm-up, then constant or a decay to zero at `total_steps`."""
  decay_steps = max(total_steps - cfg.warmup_steps, 1)
  if cfg.schedule == "constant":
    after = optax.constant_schedule(cfg.learning_rate)
  elif cfg.schedule == "linear":
    after = optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps)
  else:
    after = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps)
  if not cfg.warmup_steps:
    return after
  warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
  return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def constant_beta2_decay(step, beta2):
  """Adafactor's second-moment decay at optax step `step` (0-based) for a
  constant β2, with Adam's bias correction folded in: the estimate after t
  updates is the β2-weighted mean of the t squared gradients seen (the first
  update uses its own gradient only)."""
  t = jnp.asarray(step, jnp.float32) + 1.0
  return beta2 * (1.0 - beta2 ** (t - 1.0)) / (1.0 - beta2 ** t)


def adafactor(cfg: OptimizerConfig, schedule: optax.Schedule
              ) -> optax.GradientTransformation:
  """The paper's Adafactor: constant β2 and β1 momentum (see module doc)."""
  parts = [optax.scale_by_factored_rms(
      factored=cfg.factored, decay_rate=cfg.beta2,
      min_dim_size_to_factor=cfg.min_dim_size_to_factor, epsilon=1e-30 if cfg.epsilon is None else cfg.epsilon,
      decay_rate_fn=constant_beta2_decay)]
  if cfg.clip_update_rms is not None:
    parts.append(optax.clip_by_block_rms(cfg.clip_update_rms))
  parts.append(optax.scale_by_learning_rate(schedule, flip_sign=False))
  if cfg.multiply_by_parameter_scale:
    parts.append(optax.scale_by_param_block_rms())
  if cfg.beta1:
    parts.append(optax.ema(cfg.beta1, debias=False))
  if cfg.weight_decay:
    parts.append(optax.add_decayed_weights(cfg.weight_decay))
  parts.append(optax.scale(-1.0))
  return optax.chain(*parts)


def make_optimizer(cfg: OptimizerConfig, total_steps: int
                   ) -> optax.GradientTransformation:
  """Gradient clipping followed by the configured optimizer."""
  schedule = learning_rate_schedule(cfg, total_steps)
  if cfg.name == "adafactor":
    core = adafactor(cfg, schedule)
  else:
    core = optax.adamw(schedule, b1=cfg.beta1, b2=cfg.beta2,
                       eps=1e-8 if cfg.epsilon is None else cfg.epsilon, weight_decay=cfg.weight_decay)
  if cfg.grad_clip_norm is None:
    return core
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), core)
