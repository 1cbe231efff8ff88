"""weights.ModelWeights: the typed view reads every parameter from its path and
writes the same tree back, for scanned and unscanned layers, in and out of jit.

The paths are spelled out here on purpose: they are the reference the view is
checked against (the package takes them from `param_names.py`).
"""

import jax
import numpy as np
import pytest

from fam_jax.weights import ModelWeights, check_params
from util import init_params, tiny_config, unstack_layers

PROJECTIONS = {"attention": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down")}


def _config(**overrides):
  # Every optional parameter present: layernorm biases, an untied head, LoRA on
  # some projections, FAM.
  return tiny_config(attention="fam", block_size=4, fam_length=2, num_layers=3,
                     norm="layernorm", tie_embeddings=False, lora_rank=2,
                     lora_alpha=3.0, lora_targets=("q", "o", "down"),
                     **overrides)


def _stacked(params, num_layers):
  """The layers of params as one [L, ...] tree, by hand."""
  if "layers" in params:
    return params["layers"]
  return jax.tree_util.tree_map(
      lambda *xs: np.stack(xs),
      *[params[f"layers_{i}"] for i in range(num_layers)])


def _assert_same_trees(actual, expected):
  assert (jax.tree_util.tree_structure(actual)
          == jax.tree_util.tree_structure(expected))
  for a, b in zip(jax.tree_util.tree_leaves(actual),
                  jax.tree_util.tree_leaves(expected)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_every_parameter_is_read_from_its_path(scan_layers):
  cfg = _config(scan_layers=scan_layers)
  _, params = init_params(cfg)
  w = ModelWeights.from_params(params, cfg)
  layers = _stacked(params, cfg.num_layers)
  np.testing.assert_array_equal(w.embedding,
                                params["token_embedder"]["embedding"])
  np.testing.assert_array_equal(w.lm_head, params["lm_head"]["kernel"])
  np.testing.assert_array_equal(w.summarization_embeddings,
                                params["summarization_embeddings"])
  np.testing.assert_array_equal(w.final_norm.scale,
                                params["final_norm"]["scale"])
  np.testing.assert_array_equal(w.final_norm.bias, params["final_norm"]["bias"])
  for norm, path in ((w.layers.attn_norm, "pre_attention_norm"),
                     (w.layers.mlp_norm, "pre_mlp_norm")):
    np.testing.assert_array_equal(norm.scale, layers[path]["scale"])
    np.testing.assert_array_equal(norm.bias, layers[path]["bias"])
  for group, names in PROJECTIONS.items():
    for name in names:
      p, stored = getattr(w.layers, name), layers[group][name]
      np.testing.assert_array_equal(p.kernel, stored["kernel"])
      assert p.num_in_axes == (2 if name == "o" else 1)
      if name in cfg.lora_targets:
        np.testing.assert_array_equal(p.lora_a, stored["lora_a"])
        np.testing.assert_array_equal(p.lora_b, stored["lora_b"])
        assert p.lora_scale == 1.5
      else:
        assert p.lora_a is None and p.lora_b is None and "lora_a" not in stored
  assert (w.num_layers, w.scanned) == (3, scan_layers)
  np.testing.assert_array_equal(w.layer(2).v.kernel,
                                layers["attention"]["v"]["kernel"][2])


def test_to_params_writes_either_layout():
  cfg = _config()
  _, scanned = init_params(cfg)
  unscanned = unstack_layers(scanned, cfg.num_layers)
  from_scanned = ModelWeights.from_params(scanned, cfg)
  from_unscanned = ModelWeights.from_params(unscanned, cfg.replace(
      scan_layers=False))
  _assert_same_trees(from_scanned.to_params(), scanned)
  _assert_same_trees(from_unscanned.to_params(), unscanned)
  _assert_same_trees(from_scanned.to_params(scanned=False), unscanned)
  _assert_same_trees(from_unscanned.to_params(scanned=True), scanned)


def test_works_inside_jit():
  cfg = _config(scan_layers=False)
  _, params = init_params(cfg)
  read = jax.jit(lambda p: ModelWeights.from_params(p, cfg).layer(1).down)
  down = read(params)
  np.testing.assert_array_equal(down.kernel,
                                params["layers_1"]["mlp"]["down"]["kernel"])
  np.testing.assert_array_equal(down.lora_b,
                                params["layers_1"]["mlp"]["down"]["lora_b"])


def test_missing_or_extra_parameters_are_named():
  cfg = _config(scan_layers=False)
  _, params = init_params(cfg)
  without = lambda key: {k: v for k, v in params.items() if k != key}
  with pytest.raises(ValueError, match="no summarization_embeddings.*'fam'"):
    check_params(without("summarization_embeddings"), cfg)
  check_params(without("summarization_embeddings"), cfg.replace(
      attention="bswa"))
  with pytest.raises(ValueError, match="no lm_head/kernel"):
    check_params(without("lm_head"), cfg)
  with pytest.raises(ValueError, match="no layers_2"):
    check_params(without("layers_2"), cfg)
  with pytest.raises(ValueError, match="more layers than num_layers=2"):
    check_params(params, cfg.replace(num_layers=2))
  broken = dict(params, layers_1=dict(params["layers_1"]))
  del broken["layers_1"]["pre_mlp_norm"]
  with pytest.raises(ValueError, match="no layers_1/pre_mlp_norm"):
    check_params(broken, cfg)
  _, scanned = init_params(cfg.replace(scan_layers=True))
  with pytest.raises(ValueError, match="3 layers; the config has num_layers=4"):
    ModelWeights.from_params(scanned, cfg.replace(num_layers=4))
