"""fam-jax inside t5x: the module adapter, the t5x model, the optimizer and the
checkpoint reader (`pip install 'fam-jax[t5x]'` plus t5x, see README "Fine-tuning
with t5x"). Only this subpackage imports t5x; `import fam_jax` never does.

    module.FamT5xDecoder        FamLM with t5x's decoder-only call signature
    models.FamDecoderOnlyModel  loss, scoring and decoding for t5x's train/eval/infer
    optim.fam_optimizer         fam-train's optimizer with the LoRA mask, for t5x
    checkpoints                 a t5x checkpoint -> a fam-jax checkpoint
"""

import gin as _gin

from fam_jax.gin_utils import GIN_CONFIGS_DIR as _GIN_CONFIGS_DIR

# The t5x gins (gin_configs/t5x/) import this package first, so that their
# `include 'models/...'` lines find fam-jax's gin files wherever t5x runs.
_gin.add_config_file_search_path(str(_GIN_CONFIGS_DIR))
