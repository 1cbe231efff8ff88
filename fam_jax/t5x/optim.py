"""fam-train's optimizer for t5x, with LoRA's frozen base.

    OPTIMIZER = @optimizers.OptaxWrapper()
    optimizers.OptaxWrapper.optax_optimizer = @optim.fam_optimizer()

`fam_optimizer` builds exactly what fam-train builds from the same
`OptimizerConfig` (the paper's Adafactor with constant β2, or AdamW; schedule,
clipping), over TrainConfig.train_steps. With `finetune='lora'` it is wrapped
in `optax.multi_transform`: the adapters and the summarization embeddings
(`fam_jax.train.init.trainable_mask`, fam-train's mask) get the optimizer, every
other parameter `optax.set_to_zero()`, so the base model never changes and has
no optimizer state. (t5x still computes the frozen parameters' gradients,
fam-train does not.) The schedule lives inside the optax optimizer:
`OptaxWrapper` ignores `Trainer.learning_rate_fn`.

t5x's partitioner derives the optimizer state's sharding from a table of optax
state types that lacks `optax.FactoredState` (Adafactor's); importing this
module adds it: factored row/column statistics and the unfactored second
moment are replicated (they are vectors, or the moments of small parameters).
"""

from __future__ import annotations

from typing import Optional

import gin
import jax
import optax
from flax import traverse_util
from t5x import optimizers as t5x_optimizers

from fam_jax.config import FamConfig
from fam_jax.t5x.models import fam_config
from fam_jax.train import init as train_init
from fam_jax.train.config import TrainConfig
from fam_jax.train.optimizer import make_optimizer

TRAIN, FROZEN = "train", "frozen"


def _replicated_factored_state(state, params_axes):
  del params_axes
  none = lambda tree: jax.tree_util.tree_map(lambda _: None, tree)
  return optax.FactoredState(count=None, v_row=none(state.v_row),
                             v_col=none(state.v_col), v=none(state.v))


t5x_optimizers.OptaxStatePartitionRules._RULES.setdefault(  # pylint: disable=protected-access
    optax.FactoredState, _replicated_factored_state)


def _key_name(entry) -> str:
  return str(getattr(entry, "key", getattr(entry, "name", entry)))


def trainable_labels(params, train_config: TrainConfig, cfg=None):
  """`TRAIN`/`FROZEN` per leaf of `params` (any mapping type), by fam-train's
  mask."""
  cfg = cfg if cfg is not None else fam_config(train_config)
  plain = traverse_util.unflatten_dict(
      {tuple(map(_key_name, path)): leaf
       for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]})
  mask = traverse_util.flatten_dict(
      train_init.trainable_mask(plain, train_config, cfg))
  return jax.tree_util.tree_map_with_path(
      lambda path, _: TRAIN if mask[tuple(map(_key_name, path))] else FROZEN,
      params)


@gin.configurable
def fam_optimizer(train_config: Optional[TrainConfig] = None,
                  cfg: Optional[FamConfig] = None
                  ) -> optax.GradientTransformation:
  """fam-train's optimizer for TrainConfig (see the module doc); `cfg`
  defaults to the run's model (`models.fam_config`)."""
  train_config = train_config or TrainConfig()
  optimizer = make_optimizer(train_config.optimizer, train_config.train_steps)
  if train_config.finetune == "full":
    return optimizer
  cfg = cfg if cfg is not None else fam_config(train_config)
  return optax.multi_transform(
      {TRAIN: optimizer, FROZEN: optax.set_to_zero()},
      lambda params: trainable_labels(params, train_config, cfg))
