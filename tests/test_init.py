"""The real initialisation: parameter tree, logical axes, LoRA starting at zero."""

import jax
import jax.numpy as jnp
import numpy as np

from fam_jax import FamLM
from fam_jax.sharding import logical_partition_specs
from util import random_tokens, tiny_config, without_adapters


def _init(cfg):
  return jax.jit(FamLM(cfg).init)(jax.random.PRNGKey(0),
                                  jnp.ones((1, 3), jnp.float32))  # t5x: float ones


def test_every_parameter_has_logical_axes_of_its_rank():
  cfg = tiny_config(attention="fam", block_size=4, fam_length=2, lora_rank=2,
                    tie_embeddings=False, norm="layernorm", num_kv_heads=2)
  variables = _init(cfg)
  specs = logical_partition_specs(variables["params_axes"])
  params = variables["params"]
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  flat_specs = dict(jax.tree_util.tree_leaves_with_path(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)))
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    spec = flat_specs[path]
    assert len(spec) == leaf.ndim, (path, spec, leaf.shape)
  assert params["layers"]["attention"]["q"]["kernel"].shape == (2, 32, 4, 8)
  assert tuple(specs["layers"]["attention"]["q"]["kernel"]) == (
      "layers", "embed", "heads", "kv")
  assert tuple(specs["layers"]["attention"]["k"]["lora_b"]) == (
      "layers", "lora", "kv_heads", "kv")
  assert params["summarization_embeddings"].shape == (2, 32)


def test_fresh_adapters_compute_the_base_model():
  cfg = tiny_config(attention="fam", block_size=4, fam_length=2, lora_rank=4)
  variables = _init(cfg)
  lora_b = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(
      variables["params"]) if path[-1].key == "lora_b"]
  assert lora_b and all(np.all(np.asarray(b) == 0) for b in lora_b)
  tokens = random_tokens(cfg, 1, 9)
  adapted = FamLM(cfg).apply({"params": variables["params"]}, tokens)
  plain = FamLM(cfg.replace(lora_rank=0)).apply({"params": without_adapters(variables["params"])}, tokens)
  np.testing.assert_allclose(adapted, plain, rtol=1e-6, atol=1e-6)


def test_parameter_names():
  cfg = tiny_config(attention="fam", block_size=4, fam_length=2, scan_layers=False)
  params = _init(cfg)["params"]
  assert sorted(params) == ["final_norm", "layers_0", "layers_1",
                            "summarization_embeddings", "token_embedder"]
  assert sorted(params["layers_0"]) == ["attention", "mlp", "pre_attention_norm",
                                        "pre_mlp_norm"]
  assert sorted(params["layers_0"]["attention"]) == ["k", "o", "q", "v"]
  assert sorted(params["layers_0"]["mlp"]) == ["down", "gate", "up"]
