"""FamConfig validation and gin binding."""

import gin
import pytest

from fam_jax import FamConfig
from util import TINY


@pytest.mark.parametrize("overrides,field,allowed", [
    (dict(fam_length=16, block_size=8), "fam_length", "at most block_size=8"),
    (dict(memory_segments=-1), "memory_segments", "integer >= 0"),
    (dict(num_heads=4, num_kv_heads=3), "num_kv_heads", "divisor of num_heads=4"),
    (dict(attention="sliding"), "attention", "'full', 'bswa', 'fam'"),
    (dict(activation="relu"), "activation", "'swiglu', 'geglu'"),
    (dict(norm="batchnorm"), "norm", "'rmsnorm', 'layernorm'"),
    (dict(dtype="float64"), "dtype", "'float32', 'bfloat16', 'float16'"),
    (dict(remat="some"), "remat", "'none', 'full', 'dots'"),
    (dict(block_size=0), "block_size", "positive integer"),
    (dict(fam_length=0), "fam_length", "positive integer"),
    (dict(head_dim=7), "head_dim", "even"),
    (dict(d_model=66, num_heads=4), "d_model",
     "a multiple of num_heads=4 when head_dim is unset"),
    (dict(vocab_size=0), "vocab_size", "positive integer"),
    (dict(lora_rank=-2), "lora_rank", ">= 0"),
    (dict(lora_rank=4, lora_targets=("q", "ffn")), "lora_targets", "subset"),
    (dict(lora_rank=4, lora_targets=()), "lora_targets", "non-empty"),
    (dict(lora_alpha=0.0), "lora_alpha", "> 0"),
    (dict(rope_theta=-1.0), "rope_theta", "> 0"),
    (dict(fam_scan_unroll=0), "fam_scan_unroll", "positive integer"),
    (dict(fam_scan_batched_grads="yes"), "fam_scan_batched_grads",
     "True or False"),
    (dict(attention_kernel="flash"), "attention_kernel",
     "'einsum', 'xla', 'cudnn'"),
    (dict(attention_kernel="cudnn"), "attention_kernel",
     "'einsum' or 'xla' when dtype='float32'"),
])
def test_rejects_bad_values_naming_field_and_allowed_values(overrides, field,
                                                            allowed):
  with pytest.raises(ValueError) as error:
    FamConfig(**{**TINY, **overrides})
  message = str(error.value)
  assert f"FamConfig.{field}" in message
  assert allowed in message


def test_fam_only_fields_do_not_bind_other_attention_kinds():
  # bswa is FAM with F=0: a gin override of `attention` alone switches kinds.
  cfg = FamConfig(**{**TINY, "attention": "bswa", "fam_length": 64,
                     "block_size": 8})
  assert cfg.num_fam_tokens == 0
  assert FamConfig(**{**TINY, "block_size": 8, "fam_length": 8}).num_fam_tokens == 8


def test_defaults_are_the_papers():
  cfg = FamConfig(**TINY)
  assert (cfg.attention, cfg.block_size, cfg.memory_segments, cfg.fam_length) == (
      "fam", 1024, 3, 64)
  assert cfg.num_kv_heads == cfg.num_heads
  assert cfg.head_dim == cfg.d_model // cfg.num_heads


def test_gin_binds_fields():
  gin.clear_config()
  try:
    gin.parse_config("""
        FamConfig.vocab_size = 100
        FamConfig.num_layers = 2
        FamConfig.d_model = 32
        FamConfig.num_heads = 4
        FamConfig.mlp_dim = 64
        FamConfig.attention = 'bswa'
        FamConfig.lora_targets = ['q', 'v']
        FamConfig.lora_rank = 2
    """)
    cfg = FamConfig()
    assert cfg.attention == "bswa" and cfg.lora_targets == ("q", "v")
    hash(cfg)  # usable as a Flax module attribute / jit static argument
  finally:
    gin.clear_config()
