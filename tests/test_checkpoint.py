"""Checkpoints round-trip params and the config they belong to."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fam_jax.checkpoint import (CONFIG_FILE, load_checkpoint, load_config,
                                save_checkpoint)
from util import init_params, random_tokens, run, tiny_config


def test_round_trip(tmp_path):
  cfg = tiny_config(attention="fam", block_size=4, fam_length=2, lora_rank=2,
                    lora_targets=("q", "up"))
  model, params = init_params(cfg)
  save_checkpoint(str(tmp_path / "ckpt"), params, cfg)
  restored, restored_cfg = load_checkpoint(str(tmp_path / "ckpt"))
  assert restored_cfg == cfg
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored, params)
  tokens = random_tokens(cfg, 1, 9)
  np.testing.assert_array_equal(run(model, restored, tokens),
                                run(model, params, tokens))


def test_restore_casts_to_dtype(tmp_path):
  cfg = tiny_config(attention="bswa", block_size=4)
  _, params = init_params(cfg)
  save_checkpoint(str(tmp_path), params, cfg)
  restored, _ = load_checkpoint(str(tmp_path), dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree_util.tree_leaves(restored)} == {
      jnp.dtype(jnp.bfloat16)}


def test_not_a_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a fam-jax checkpoint"):
    load_config(str(tmp_path))
  with open(os.path.join(tmp_path, CONFIG_FILE), "w") as f:
    json.dump({"format": "fam-jax/1", "config": {"vocab_size": 3, "colour": 1}}, f)
  with pytest.raises(ValueError, match="colour"):
    load_config(str(tmp_path))
