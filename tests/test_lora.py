"""LoRA: merged weights compute what the adapters compute; what trains."""

import jax
import pytest

from fam_jax import FamLM
from fam_jax.lora import merge_lora, trainable_mask
from util import (init_params, random_tokens, rel_err, run, tiny_config,
                  without_adapters)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_merged_equals_unmerged(scan_layers):
  cfg = tiny_config(attention="fam", block_size=4, memory_segments=1,
                    fam_length=2, num_kv_heads=2, lora_rank=3, lora_alpha=5.0,
                    scan_layers=scan_layers)
  model, params = init_params(cfg)
  tokens = random_tokens(cfg, 2, 11)
  adapted = run(model, params, tokens)
  merged, merged_cfg = merge_lora(params, cfg)
  assert merged_cfg.lora_rank == 0
  names = {p[-1].key for p, _ in jax.tree_util.tree_leaves_with_path(merged)}
  assert not names & {"lora_a", "lora_b"}
  assert rel_err(run(FamLM(merged_cfg), merged, tokens), adapted) <= 1e-5
  # The adapters matter: dropping them changes the logits.
  assert rel_err(adapted, run(FamLM(merged_cfg), without_adapters(params), tokens)) > 1e-3


def _trained(mask):
  """The paths of the leaves a mask sets."""
  return sorted("/".join(k.key for k in path)
                for path, on in jax.tree_util.tree_leaves_with_path(mask) if on)


def test_trainable_mask_selects_adapters_and_fam_parameters():
  cfg = tiny_config(attention="fam", block_size=4, fam_length=2, lora_rank=2,
                    lora_targets=("q", "down"))
  _, params = init_params(cfg)
  trained = _trained(trainable_mask(params))
  assert trained == ["layers/attention/q/lora_a", "layers/attention/q/lora_b",
                     "layers/mlp/down/lora_a", "layers/mlp/down/lora_b",
                     "summarization_embeddings"]


def test_merge_needs_adapters():
  cfg = tiny_config(attention="bswa", block_size=4)
  _, params = init_params(cfg)
  with pytest.raises(ValueError, match="lora_rank"):
    merge_lora(params, cfg)


def test_trainable_mask_follows_an_unscanned_layout():
  cfg = tiny_config(attention="fam", block_size=4, fam_length=2, lora_rank=2,
                    lora_targets=("v",), scan_layers=False)
  _, params = init_params(cfg)
  mask = trainable_mask(params)
  assert (jax.tree_util.tree_structure(mask)
          == jax.tree_util.tree_structure(params))
  assert _trained(mask) == [
      "layers_0/attention/v/lora_a", "layers_0/attention/v/lora_b",
      "layers_1/attention/v/lora_a", "layers_1/attention/v/lora_b",
      "summarization_embeddings"]
  assert all(isinstance(on, bool) for on in jax.tree_util.tree_leaves(mask))
