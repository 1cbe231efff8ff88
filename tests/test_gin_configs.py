"""Every model gin parses into a valid FamConfig of the advertised shape."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fam_jax import FamConfig, FamLM
from fam_jax.gin_utils import GIN_CONFIGS_DIR, parse_gin

# (file, layers, d_model, heads, kv heads, mlp_dim): PAPER.md, "Training setup".
PAPER_SHAPES = [
    ("models/fam_1b.gin", 18, 1536, 12, 12, 8 * 1536),
    ("models/fam_8b.gin", 32, 4096, 32, 32, 4 * 4096),
    ("models/fam_24b.gin", 56, 4096, 32, 1, 8 * 4096),
]


def _config(path, bindings=()):
  parse_gin([path], bindings)
  return FamConfig()


def _num_params(cfg):
  shapes = jax.eval_shape(FamLM(cfg).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 1), jnp.int32))["params"]
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))


@pytest.mark.parametrize("path,layers,d_model,heads,kv_heads,mlp", PAPER_SHAPES)
def test_paper_model_shapes(path, layers, d_model, heads, kv_heads, mlp, capsys):
  cfg = _config(path)
  assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads,
          cfg.mlp_dim) == (layers, d_model, heads, kv_heads, mlp)
  assert (cfg.vocab_size, cfg.block_size, cfg.fam_length, cfg.memory_segments) == (
      256000, 1024, 64, 3)
  count = _num_params(cfg)
  with capsys.disabled():
    print(f"\n[params] {path}: {count / 1e9:.2f}B parameters")
  # Attention + gated FF per layer, tied 256k embedding, FAM's F x D.
  per_layer = (2 * d_model * heads * 128 + 2 * d_model * kv_heads * 128 +
               3 * d_model * mlp + 2 * d_model)
  assert count == layers * per_layer + 256000 * d_model + 64 * d_model + d_model


def test_every_gin_file_parses():
  files = sorted(p.relative_to(GIN_CONFIGS_DIR)
                 for p in GIN_CONFIGS_DIR.glob("models/*.gin"))
  assert len(files) >= 5
  for path in files:
    gin.clear_config()
    if path.name == "paper_base.gin":
      continue  # a fragment: no layer shapes
    assert isinstance(_config(str(path)), FamConfig)


def test_attention_kind_switches_by_binding():
  cfg = _config("models/tiny.gin", ["config.FamConfig.attention = 'bswa'"])
  assert cfg.attention == "bswa" and cfg.num_fam_tokens == 0
