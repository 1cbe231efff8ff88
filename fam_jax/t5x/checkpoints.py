"""A t5x checkpoint -> a fam-jax checkpoint that fam-generate streams.

    python -m fam_jax.t5x.checkpoints --t5x_checkpoint=MODEL_DIR/checkpoint_100 \
      --gin_file=t5x/tiny.gin --output=/tmp/tiny_fam
    fam-generate --checkpoint /tmp/tiny_fam --prompt "..."

t5x saves the train state with orbax: `<checkpoint>/state` holds `target` (the
parameters), `state` (the optimizer) and `flax_mutables` (the FAM of random
state passing). `target` is a fam-jax params tree already (FamT5xDecoder shares
FamLM's scope), so conversion is reading it and writing it beside its FamConfig.
The checkpoint does not record the FamConfig: it comes from the model gin of the
run (`--gin_file`, the FamConfig and TrainConfig.model_overrides bindings, as
`models.fam_config` builds it), and the parameters are checked against it.
`--merge_lora` folds the adapters into the kernels (`fam_jax.lora.merge_lora`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import gin
import jax
import orbax.checkpoint as ocp

from fam_jax import checkpoint, lora
from fam_jax.config import FamConfig
from fam_jax.gin_utils import parse_gin
from fam_jax.t5x.models import fam_config
from fam_jax.tasks.features import DECODER_BOS
from fam_jax.weights import check_params

STATE_DIR = "state"  # t5x's orbax item of the train state
PARAMS_ENTRY = "target"  # the parameters inside it


def read_params(t5x_checkpoint: str):
  """The parameters of a t5x checkpoint directory (`.../checkpoint_<step>`)."""
  path = os.path.join(os.path.abspath(t5x_checkpoint), STATE_DIR)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} not found: {t5x_checkpoint} is not a t5x "
                            "checkpoint (a MODEL_DIR/checkpoint_<step> directory "
                            "written by t5x.train)")
  try:
    tree = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: cannot read the checkpoint's metadata "
                     f"({str(e).splitlines()[0][:120]})") from e
  if PARAMS_ENTRY not in tree:
    raise ValueError(f"{path} holds {sorted(tree)}, no '{PARAMS_ENTRY}': not a "
                     "t5x train state")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      tree[PARAMS_ENTRY], is_leaf=lambda x: hasattr(x, "shape"))
  return checkpoint.restore_arrays(path, "the t5x checkpoint's parameters",
                                   abstract, PARAMS_ENTRY)


def model_config(gin_files: Sequence[str], bindings: Sequence[str] = ()
                 ) -> FamConfig:
  """The FamConfig a t5x run's model gin describes."""
  gin.clear_config()
  parse_gin(gin_files, bindings)
  return fam_config()


def convert(t5x_checkpoint: str, output: str, cfg: FamConfig, *,
            merge_lora: bool = False, overwrite: bool = False) -> FamConfig:
  """Writes the parameters of `t5x_checkpoint` as a fam-jax checkpoint.

  Returns:
    The config written (lora_rank 0 after merge_lora).
  """
  params = read_params(t5x_checkpoint)
  try:
    check_params(params, cfg)
  except ValueError as e:
    raise ValueError(f"{t5x_checkpoint} does not fit the model gin's FamConfig "
                     f"({e})") from None
  if merge_lora and cfg.lora_rank:
    params, cfg = lora.merge_lora(params, cfg)
  # t5x's rows (seqio's converters) and its decoding start with DECODER_BOS.
  checkpoint.save_checkpoint(output, params, cfg, overwrite=overwrite,
                             prompt_prefix=(DECODER_BOS,))
  return cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m fam_jax.t5x.checkpoints",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--t5x_checkpoint", required=True,
                 help="MODEL_DIR/checkpoint_<step> of a t5x run")
  p.add_argument("--gin_file", action="append", required=True,
                 help="the run's model gin, e.g. t5x/tiny.gin or train/fam_1b.gin")
  p.add_argument("--gin", action="append", default=[],
                 help="gin bindings, e.g. \"FamConfig.attention = 'bswa'\"")
  p.add_argument("--output", required=True, help="the fam-jax checkpoint to write")
  p.add_argument("--merge_lora", action="store_true",
                 help="fold the LoRA adapters into the kernels")
  p.add_argument("--overwrite", action="store_true")
  args = p.parse_args(argv)
  try:
    cfg = model_config(args.gin_file, args.gin)
    cfg = convert(args.t5x_checkpoint, args.output, cfg,
                  merge_lora=args.merge_lora, overwrite=args.overwrite)
  except (FileNotFoundError, ValueError, OSError) as e:
    print(f"fam_jax.t5x.checkpoints: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.output} (attention={cfg.attention}, "
        f"lora_rank={cfg.lora_rank})", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
