"""TrainConfig: everything a fam-train run needs beyond the model's FamConfig.

Gin-configurable and validated on construction, like `FamConfig`: a bad field fails
before any data is read or anything compiles, naming the field and what it accepts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import gin

from fam_jax.train.optimizer import OptimizerConfig

FINETUNE_MODES = ("lora", "full")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A fine-tuning (or training) run.

  Attributes:
    mixture_or_task_name: the seqio task or mixture to train on (its "train"
      split), as t5x's MIXTURE_OR_TASK_NAME.
    sequence_length: tokens per row (the `targets` feature length).
    batch_size: rows per step, over all processes and devices.
    train_steps: the step to stop at (absolute: a resumed run goes on to it).
    grad_accumulation_steps: microbatches per step; batch_size must divide by it.
      The step's gradient is that of the whole batch.
    finetune: `lora` (only the LoRA adapters and the summarization embeddings
      train, as in the paper; needs FamConfig.lora_rank > 0) or `full`.
    init_checkpoint: where the weights start: None (random, from the FamConfig
      of the gin files), a fam-jax checkpoint directory (fam-convert output or an
      exported run), or `gguf:smollm2` / `gguf:PATH` (a llama.cpp GGUF file).
    model_overrides: FamConfig fields to change on a loaded checkpoint's config,
      e.g. {"attention": "fam", "block_size": 128, "lora_rank": 64}.
    random_position_offset: the paper's random position offset (appendix B.2).
    zero_offset_probability: probability that an example's offset is 0 (0.5).
    state_passing_probability: random state passing: probability that a step
      starts from the previous step's final FAM (paper 0.8; 0 disables).
    share_first_example: the paper's variant of state passing: every row starts
      from row 0's FAM, one coin per step. False: each row continues its own
      FAM with its own coin.
    z_loss: coefficient of the log(Z)² auxiliary loss (0: none).
    seed: seeds parameters, dropout-free training randomness and the data.
    shuffle: shuffle the training data (seqio's shuffle buffer, seeded).
    checkpoint_every: save every this many steps (and at the end and on SIGTERM).
    keep_checkpoints: how many of the newest checkpoints to keep.
    eval_every: evaluate every this many steps (0: only at the end).
    eval_tasks: LM tasks whose `eval_split` rows give loss and perplexity.
    eval_split: the split of eval_tasks and decode_tasks.
    eval_batches: batches of each eval task per evaluation.
    decode_tasks: `inputs`/`targets` tasks (e.g. fam_passkey_1k) scored with their
      own metrics by greedy decoding through the streaming path.
    decode_examples: examples of each decode task per evaluation.
    decode_max_new_tokens: tokens generated per example.
    perplexity_files: text files whose whole-text perplexity is measured at
      every evaluation (each file one sequence, the task's vocabulary).
    log_every: write metrics every this many steps.
    mesh_data, mesh_fsdp, mesh_tensor: the device mesh (see fam_jax.sharding);
      mesh_data=-1 takes the devices left by the other two.
    export_merged: at the end, write `<model_dir>/export/`: a fam-jax checkpoint
      with the LoRA adapters folded in, which fam-generate reads.
    optimizer: the OptimizerConfig.
  """

  mixture_or_task_name: str = "fam_passkey_train"
  sequence_length: int = 2048
  batch_size: int = 8
  train_steps: int = 1000
  grad_accumulation_steps: int = 1
  finetune: str = "lora"
  init_checkpoint: Optional[str] = None
  model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  random_position_offset: bool = True
  zero_offset_probability: float = 0.5
  state_passing_probability: float = 0.8
  share_first_example: bool = True
  z_loss: float = 0.0
  seed: int = 0
  shuffle: bool = True
  checkpoint_every: int = 100
  keep_checkpoints: int = 3
  eval_every: int = 0
  eval_tasks: tuple[str, ...] = ()
  eval_split: str = "validation"
  eval_batches: int = 4
  decode_tasks: tuple[str, ...] = ()
  decode_examples: int = 100
  decode_max_new_tokens: int = 16
  perplexity_files: tuple[str, ...] = ()
  log_every: int = 10
  mesh_data: int = -1
  mesh_fsdp: int = 1
  mesh_tensor: int = 1
  export_merged: bool = False
  optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)

  def __post_init__(self):
    # gin hands lists and dicts; keep the config hashable and comparable.
    for name in ("eval_tasks", "decode_tasks", "perplexity_files"):
      value = getattr(self, name)
      object.__setattr__(self, name,
                         (value,) if isinstance(value, str) else tuple(value))
    object.__setattr__(self, "model_overrides", dict(self.model_overrides))
    self.validate()

  def validate(self) -> None:
    for name in ("sequence_length", "batch_size", "train_steps",
                 "grad_accumulation_steps", "checkpoint_every",
                 "keep_checkpoints", "eval_batches", "decode_examples",
                 "decode_max_new_tokens", "log_every", "mesh_fsdp",
                 "mesh_tensor"):
      if not _is_positive_int(getattr(self, name)):
        _fail(name, getattr(self, name), "a positive integer")
    if not isinstance(self.mixture_or_task_name, str) or not self.mixture_or_task_name:
      _fail("mixture_or_task_name", self.mixture_or_task_name,
            "the name of a registered seqio task or mixture")
    if self.batch_size % self.grad_accumulation_steps:
      _fail("grad_accumulation_steps", self.grad_accumulation_steps,
            f"a divisor of batch_size={self.batch_size}")
    if self.finetune not in FINETUNE_MODES:
      _fail("finetune", self.finetune, f"one of {FINETUNE_MODES}")
    for name in ("zero_offset_probability", "state_passing_probability"):
      if not 0 <= getattr(self, name) <= 1:
        _fail(name, getattr(self, name), "a probability in [0, 1]")
    if not (isinstance(self.eval_every, int) and self.eval_every >= 0):
      _fail("eval_every", self.eval_every, "an integer >= 0 (0: at the end only)")
    if not (self.mesh_data == -1 or _is_positive_int(self.mesh_data)):
      _fail("mesh_data", self.mesh_data, "a positive integer or -1")
    if self.z_loss < 0:
      _fail("z_loss", self.z_loss, "a number >= 0")
    if not isinstance(self.optimizer, OptimizerConfig):
      _fail("optimizer", self.optimizer, "an OptimizerConfig")

  @property
  def microbatch_size(self) -> int:
    return self.batch_size // self.grad_accumulation_steps

  def replace(self, **changes) -> "TrainConfig":
    return dataclasses.replace(self, **changes)


def _is_positive_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _fail(name, value, allowed: str) -> None:
  raise ValueError(f"TrainConfig.{name} must be {allowed}; got {value!r}")
