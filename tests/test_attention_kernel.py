"""FamConfig.attention_kernel: jax.nn.dot_product_attention in place of
`layers.attend` gives the same model (logits against the float64 reference,
gradients against the einsum kernel); cuDNN's only where a GPU is present."""

import jax
import numpy as np
import optax
import pytest

from reference import reference_forward
from util import init_params, packed_segments, random_tokens, rel_err, run, tiny_config

TOL = 1e-5  # as test_model: max relative error vs the float64 reference

CASES = [  # (attention, block_size, memory_segments, fam_length, num_kv_heads)
    ("fam", 4, 1, 2, 2), ("fam", 8, 3, 4, 1), ("bswa", 4, 2, 1, 4),
    ("full", 4, 0, 1, 2)]


def _loss(model, tokens, **inputs):
  def loss(params):
    logits = model.apply({"params": params}, tokens, **inputs)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits[:, :-1], tokens[:, 1:]).mean()
  return loss


@pytest.mark.parametrize("attention,n,m,f,kv", CASES)
def test_xla_kernel_matches_reference_and_einsum_gradients(attention, n, m, f, kv):
  cfg = tiny_config(attention=attention, block_size=n, memory_segments=m,
                    fam_length=f, num_kv_heads=kv, attention_kernel="xla")
  model, params = init_params(cfg)
  tokens = random_tokens(cfg, 3, 37)
  segments, positions = packed_segments(np.random.default_rng(n + m), 3, 37,
                                        3 * n)
  inputs = dict(positions=positions, segment_ids=segments)
  expected, _ = reference_forward(params, cfg, tokens, **inputs)
  logits = run(model, params, tokens, **inputs)
  assert rel_err(logits, expected, where=segments != 0) <= TOL

  einsum_model, _ = init_params(cfg.replace(attention_kernel="einsum"))
  grads = jax.jit(jax.grad(_loss(model, tokens, **inputs)))(params)
  einsum_grads = jax.jit(jax.grad(_loss(einsum_model, tokens, **inputs)))(params)
  for (path, g), e in zip(jax.tree_util.tree_leaves_with_path(grads),
                          jax.tree_util.tree_leaves(einsum_grads)):
    assert rel_err(g, e) <= 1e-4, path


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN needs a GPU")
@pytest.mark.parametrize("attention", ["fam", "bswa", "full"])
def test_cudnn_kernel_matches_einsum_on_gpu(attention):
  """bfloat16 both ways: equal to bfloat16 rounding of the attention inputs."""
  cfg = tiny_config(attention=attention, block_size=16, memory_segments=2,
                    fam_length=8, num_heads=4, num_kv_heads=2, d_model=64,
                    dtype="bfloat16", attention_kernel="cudnn", init_std=0.5)
  model, params = init_params(cfg)
  einsum_model, _ = init_params(cfg.replace(attention_kernel="einsum"))
  tokens = random_tokens(cfg, 2, 96)
  segments, positions = packed_segments(np.random.default_rng(0), 2, 96, 40)
  inputs = dict(positions=positions, segment_ids=segments)
  logits = run(model, params, tokens, **inputs)
  expected = run(einsum_model, params, tokens, **inputs)
  assert rel_err(logits, expected, where=segments != 0) <= 3e-2
  grads = jax.grad(_loss(model, tokens, **inputs))(params)
  einsum_grads = jax.grad(_loss(einsum_model, tokens, **inputs))(params)
  for (path, g), e in zip(jax.tree_util.tree_leaves_with_path(grads),
                          jax.tree_util.tree_leaves(einsum_grads)):
    assert rel_err(g, e) <= 5e-2, path
