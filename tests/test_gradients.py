"""Gradients: finite everywhere, equal to finite differences, through FAM."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from util import init_params, random_tokens, tiny_config


def _loss_fn(model, tokens, segments=None):
  def loss(params):
    logits = model.apply({"params": params}, tokens, segment_ids=segments)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits[:, :-1], tokens[:, 1:]).mean()
  return loss


@pytest.mark.parametrize("attention,remat", [("fam", "full"), ("fam", "none"),
                                             ("bswa", "dots"), ("full", "none")])
def test_gradients_match_finite_differences(attention, remat):
  cfg = tiny_config(attention=attention, block_size=4, memory_segments=1,
                    fam_length=2, num_kv_heads=2, lora_rank=2, remat=remat,
                    d_model=16, mlp_dim=24)
  model, params = init_params(cfg)
  loss = jax.jit(_loss_fn(model, random_tokens(cfg, 2, 13)))
  grads = jax.jit(jax.grad(_loss_fn(model, random_tokens(cfg, 2, 13))))(params)
  rng = np.random.default_rng(0)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), path
    # Directional derivative along a random direction inside this leaf.
    direction = rng.standard_normal(g.shape).astype(np.float32)
    direction /= np.linalg.norm(direction)
    # float32 losses: the central difference's rounding noise is ~ulp(loss)/eps
    # (at 1e-2, up to 4% of some directional derivatives here); its
    # truncation error, O(eps^2), stays far below the 2% tolerance at 3e-2.
    eps = 3e-2
    bump = lambda s: jax.tree_util.tree_map_with_path(
        lambda p, x: x + s * eps * direction if p == path else x, params)
    numeric = (float(loss(bump(1.0))) - float(loss(bump(-1.0)))) / (2 * eps)
    analytic = float(np.sum(np.asarray(g) * direction))
    scale = max(abs(analytic), 1e-3)
    assert abs(numeric - analytic) <= 2e-2 * scale, (path, numeric, analytic)


def _late_loss(model, tokens):
  def loss(params):  # on the last block (tokens 8..11) only
    return jnp.sum(model.apply({"params": params}, tokens)[:, 8:] ** 2)
  return loss


def test_summarization_embeddings_get_gradients():
  cfg = tiny_config(attention="fam", block_size=4, memory_segments=0,
                    fam_length=2)
  model, params = init_params(cfg)
  grads = jax.grad(_late_loss(model, random_tokens(cfg, 1, 12)))(params)
  assert np.abs(grads["summarization_embeddings"]).max() > 0


def test_memory_segment_keys_carry_gradients():
  """The paper: stop-gradient on memory segments hurts, so they must not have one.
  In one BSWA layer with m=1, block 1 reaches block 2 only as memory keys/values."""
  cfg = tiny_config(attention="bswa", block_size=4, memory_segments=1,
                    num_layers=1, tie_embeddings=False)
  model, params = init_params(cfg)
  tokens = random_tokens(cfg, 1, 12)
  grads = jax.grad(_late_loss(model, tokens))(params)["token_embedder"]["embedding"]
  in_block_1 = [t for t in tokens[0, 4:8] if t not in tokens[0, 8:]]
  in_block_0_only = [t for t in tokens[0, :4] if t not in tokens[0, 4:]]
  assert in_block_1 and in_block_0_only
  assert np.abs(grads[in_block_1[0]]).max() > 0
  # Block 0 is outside the last block's window: exactly no gradient.
  assert np.abs(grads[in_block_0_only[0]]).max() == 0


def test_packed_gradients_are_finite():
  cfg = tiny_config(attention="fam", block_size=4, memory_segments=1, fam_length=2)
  model, params = init_params(cfg)
  tokens = random_tokens(cfg, 1, 14)
  segments = np.array([[1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 0, 0, 0]])
  grads = jax.grad(_loss_fn(model, tokens, segments))(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("packed,remat,lora_rank,unroll", [
    (False, "none", 0, 1), (True, "full", 2, 2), (False, "dots", 2, 3)])
def test_batched_fam_scan_gradients_equal_autodiff(packed, remat, lora_rank,
                                                   unroll):
  """fam_scan_batched_grads (scan_grads.scan) changes only the order of the
  gradient's sums: every leaf's gradient, through the logits and through the
  final FAM state, equals autodiff's."""
  cfg = tiny_config(attention="fam", block_size=4, memory_segments=1,
                    fam_length=2, num_kv_heads=2, lora_rank=lora_rank,
                    remat=remat, fam_scan_unroll=unroll, d_model=16,
                    mlp_dim=24)
  tokens = random_tokens(cfg, 2, 23)
  segments = None
  if packed:
    segments = np.array([[1] * 9 + [2] * 11 + [0] * 3,
                         [1] * 5 + [2] * 2 + [3] * 16], np.int32)

  def loss_of(model):
    def loss(params):
      logits, fam = model.apply({"params": params}, tokens,
                                segment_ids=segments, return_fam_state=True)
      return (optax.softmax_cross_entropy_with_integer_labels(
          logits[:, :-1], tokens[:, 1:]).mean() + 0.1 * jnp.sum(fam ** 2))
    return loss

  model, params = init_params(cfg)
  batched, _ = init_params(cfg.replace(fam_scan_batched_grads=True))
  assert "custom_vjp_call" in str(jax.make_jaxpr(loss_of(batched))(params))
  want = jax.jit(jax.grad(loss_of(model)))(params)
  got = jax.jit(jax.grad(loss_of(batched)))(params)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got),
                          jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * np.abs(w).max(),
                               err_msg=str(path))
