"""benchmarks/train_step.py's model FLOPs: the attention pairs it counts are the
True entries of the model's own masks (fam_jax.masks), for every attention."""

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from fam_jax import masks
from fam_jax.config import FamConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import train_step  # noqa: E402  pylint: disable=g-import-not-at-top

N, M, F, T = 8, 2, 3, 48


def mask_pairs(cfg: FamConfig) -> int:
  valid = jnp.ones((1, T), bool)
  if cfg.attention == "full":
    return int(masks.causal_mask(valid, None).sum())
  blocks = masks.split_blocks(valid, N)
  fam = cfg.num_fam_tokens
  pairs = int(masks.block_attention_mask(blocks, M, fam).sum())
  if fam:
    pairs += T // N * int(masks.fam_update_mask(blocks[:, 0], fam).sum())
  return pairs


@pytest.mark.parametrize("attention", ["full", "bswa", "fam"])
def test_attention_pairs_are_the_masks_true_entries(attention):
  cfg = FamConfig(vocab_size=32, num_layers=1, d_model=16, num_heads=2,
                  mlp_dim=32, block_size=N, memory_segments=M, fam_length=F,
                  attention=attention)
  assert train_step.attention_pairs(cfg, T) == mask_pairs(cfg)


def test_model_flops_weights_and_backward():
  cfg = FamConfig(vocab_size=100, num_layers=2, d_model=16, num_heads=4,
                  num_kv_heads=2, mlp_dim=24, block_size=N, memory_segments=M,
                  fam_length=F, attention="bswa")
  hd = 4
  per_token = 2 * (2 * (16 * hd * (4 + 2 + 2 + 4) + 3 * 16 * 24) + 16 * 100)
  attention = 2 * 2 * 2 * 4 * hd * train_step.attention_pairs(cfg, T)
  full = train_step.model_flops(cfg, T, 3, "full")
  lora = train_step.model_flops(cfg, T, 3, "lora")
  np.testing.assert_allclose(full, 3 * (3 * T * per_token) + 3 * 3 * attention)
  np.testing.assert_allclose(lora, 2 * (3 * T * per_token) + 3 * 3 * attention)
