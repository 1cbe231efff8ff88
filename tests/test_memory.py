"""Compiled peak memory of a forward+backward pass grows linearly with length for
bswa/fam (no (length)² array exists) and quadratically for full attention."""

import jax
import jax.numpy as jnp
import optax
import pytest

from fam_jax import FamLM
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
