"""Compiled peak memory of a forward+backward pass grows linearly with length for
bswa/fam (no (length)² array exists) and quadratically for full attention; the
streaming memory estimate bounds what XLA allocates."""

import jax
import jax.numpy as jnp
import optax
import pytest

from fam_jax import FamLM, memory, streaming
from util import tiny_config


def _train_step_bytes(cfg, length: int) -> int:
  """Arguments + outputs + temporaries of the compiled gradient computation."""
  model = FamLM(cfg)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 1), jnp.int32))["params"]

  def loss(p, tokens):
    logits = model.apply({"params": p}, tokens)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits[:, :-1], tokens[:, 1:]).mean()

  tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
  stats = jax.jit(jax.grad(loss)).lower(params, tokens).compile().memory_analysis()
  return (stats.temp_size_in_bytes + stats.argument_size_in_bytes +
          stats.output_size_in_bytes)


@pytest.mark.parametrize("attention", ["fam", "bswa", "full"])
def test_peak_memory_growth(attention, capsys):
  cfg = tiny_config(attention=attention, block_size=256, memory_segments=1,
                    fam_length=16, vocab_size=64, num_heads=2, mlp_dim=64)
  short, long = 4096, 32768
  small, large = _train_step_bytes(cfg, short), _train_step_bytes(cfg, long)
  ratio = large / small
  with capsys.disabled():
    print(f"\n[memory] {attention}: forward+backward peak {small / 2**20:.1f} MiB "
          f"at {short} tokens, {large / 2**20:.1f} MiB at {long} tokens: "
          f"ratio {ratio:.2f} for {long // short}x the tokens")
  if attention == "full":
    assert ratio > 30  # quadratic: 64x in the limit
  else:
    assert ratio <= 10


WIDER = dict(num_layers=4, d_model=128, num_heads=8, num_kv_heads=8, mlp_dim=512)


@pytest.mark.parametrize("attention,capacity,fields", [
    ("full", 4096, {}), ("full", 32768, {}), ("full", 1000, WIDER),
    ("fam", None, {}), ("bswa", None, {}),
    ("fam", None, dict(block_size=512, memory_segments=3, fam_length=64))])
def test_stream_memory_estimate_bounds_xla_analysis(attention, capacity, fields):
  """memory.stream_memory, the estimate behind fam-generate's refusal, against
  XLA's analysis of the compiled streaming step: the state and weights are
  exact, the activations at least XLA's temporaries and at most twice them
  (measured: 1.17-1.69x)."""
  cfg = tiny_config(**{**dict(attention=attention, vocab_size=259, d_model=64,
                              num_heads=4, num_kv_heads=2, mlp_dim=128,
                              block_size=64, memory_segments=1, fam_length=8),
                       **fields})
  params = jax.eval_shape(FamLM(cfg).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 1), jnp.int32))["params"]
  state = jax.eval_shape(
      lambda p: streaming.init_state(p, cfg, 1, capacity=capacity), params)
  need = memory.stream_memory(cfg, batch_size=1, capacity=capacity)
  chunk = cfg.block_size if cfg.is_blockwise else min(capacity, 512)
  stats = streaming._jit_step.lower(
      params, state, jax.ShapeDtypeStruct((1, chunk), jnp.int32),
      jax.ShapeDtypeStruct((1,), jnp.int32), cfg, False).compile().memory_analysis()
  leaves = lambda tree: jax.tree_util.tree_leaves(tree)
  assert need.state == sum(x.size * x.dtype.itemsize for x in leaves(state))
  assert need.weights == sum(x.size * x.dtype.itemsize for x in leaves(params))
  assert stats.temp_size_in_bytes <= need.activations <= 2 * stats.temp_size_in_bytes


def test_a_request_larger_than_memory_is_refused_naming_the_flag():
  full = tiny_config(attention="full")
  need = memory.stream_memory(full, capacity=10**6)
  with pytest.raises(memory.MemoryTooSmall,
                     match=r"--capacity 1000000 \(attention='full'\) needs about "
                     r"[\d.,]+ GiB .* but 0.1 GiB are available; lower --capacity"):
    memory.check_fits(need, full, capacity=10**6, available=100 * 2**20)
  memory.check_fits(need, full, capacity=10**6, available=need.total)
  with pytest.raises(ValueError, match="pass capacity=<max tokens>"):
    memory.stream_memory(full)
  fam = tiny_config(attention="fam", block_size=4096, fam_length=8)
  with pytest.raises(memory.MemoryTooSmall, match="lower --block-size or "
                     "--memory-segments"):
    memory.check_fits(memory.stream_memory(fam), fam, available=2**20)
