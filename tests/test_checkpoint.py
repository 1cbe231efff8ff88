"""Checkpoints round-trip params and the config they belong to."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fam_jax import checkpoint
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


def test_prompt_prefix_is_kept_beside_the_config(tmp_path):
  cfg = tiny_config()
  _, params = init_params(cfg)
  save_checkpoint(str(tmp_path / "trained"), params, cfg, prompt_prefix=(0,))
  save_checkpoint(str(tmp_path / "converted"), params, cfg)
  assert checkpoint.load_prompt_prefix(str(tmp_path / "trained")) == [0]
  assert checkpoint.load_prompt_prefix(str(tmp_path / "converted")) == []
  assert load_config(str(tmp_path / "trained")) == cfg
  path = tmp_path / "trained" / CONFIG_FILE
  data = json.loads(path.read_text())
  data["prompt_prefix"] = ["<s>"]
  path.write_text(json.dumps(data))
  with pytest.raises(ValueError, match="prompt_prefix must be a list of token"):
    checkpoint.load_prompt_prefix(str(tmp_path / "trained"))


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


def test_an_existing_checkpoint_is_refused_before_writing(tmp_path):
  cfg = tiny_config(attention="bswa", block_size=4)
  _, params = init_params(cfg)
  _, other = init_params(cfg, seed=2)
  save_checkpoint(str(tmp_path / "c"), params, cfg)
  with pytest.raises(FileExistsError, match="already holds a fam-jax checkpoint"):
    save_checkpoint(str(tmp_path / "c"), other, cfg.replace(block_size=8))
  restored, restored_cfg = load_checkpoint(str(tmp_path / "c"))
  assert restored_cfg == cfg  # the config was not rewritten either
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored, params)
  save_checkpoint(str(tmp_path / "c"), other, cfg, overwrite=True)
  jax.tree_util.tree_map(np.testing.assert_array_equal,
                         load_checkpoint(str(tmp_path / "c"))[0], other)
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "todo.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not a fam-jax checkpoint"):
    save_checkpoint(str(tmp_path / "notes"), params, cfg, overwrite=True)
  assert os.listdir(tmp_path / "notes") == ["todo.txt"]


def test_params_fingerprint_tells_weights_apart(tmp_path):
  cfg = tiny_config(attention="fam", block_size=4, fam_length=2)
  _, params = init_params(cfg)
  _, other = init_params(cfg, seed=2)
  fingerprint = checkpoint.params_fingerprint(params)
  assert checkpoint.params_fingerprint(other) != fingerprint
  # The same values on the host, or saved and restored: the same fingerprint.
  on_host = jax.tree_util.tree_map(np.asarray, params)
  assert checkpoint.params_fingerprint(on_host) == fingerprint
  save_checkpoint(str(tmp_path / "c"), params, cfg)
  assert checkpoint.params_fingerprint(load_checkpoint(str(tmp_path / "c"))[0]) == fingerprint
  # The first and last element of every leaf are sampled: changing either one
  # anywhere changes the fingerprint.
  for path, leaf in jax.tree_util.tree_flatten_with_path(on_host)[0]:
    for index in (0, -1):
      edited = np.array(leaf).reshape(-1)
      edited[index] += 1
      changed = jax.tree_util.tree_map_with_path(
          lambda p, x, path=path, edited=edited: (
              edited.reshape(x.shape) if p == path else x), on_host)
      assert checkpoint.params_fingerprint(changed) != fingerprint, (path, index)
