"""Helpers shared by the tests: tiny models with non-trivial weights."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from fam_jax import FamConfig, FamLM

TINY = dict(vocab_size=61, num_layers=2, d_model=32, num_heads=4, mlp_dim=48,
            init_std=1.0)


def tiny_config(**overrides) -> FamConfig:
  return FamConfig(**{**TINY, **overrides})


def random_tokens(cfg: FamConfig, batch: int, length: int, seed: int = 0):
  return np.asarray(jax.random.randint(jax.random.PRNGKey(seed), (batch, length),
                                       0, cfg.vocab_size), np.int32)


def init_params(cfg: FamConfig, seed: int = 1):
  """Random weights of the model's exact parameter tree, drawn with NumPy.

  Every leaf is random (norm scales near 1, LoRA B non-zero) so that each one
  takes part in a comparison. Much faster than `model.init`, which compiles each
  initializer; `test_init.py` covers the real initialisation.
  """
  model = FamLM(cfg)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 1), jnp.int32))["params"]
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    noise = rng.standard_normal(leaf.shape)
    if name == "scale":
      value = 1.0 - cfg.norm_scale_offset + 0.1 * noise
    elif name == "bias":
      value = 0.1 * noise
    elif name in ("embedding", "summarization_embeddings"):
      value = cfg.init_std * noise
    else:
      value = noise / np.sqrt(cfg.d_model)
    return jnp.asarray(value, leaf.dtype)

  return model, jax.tree_util.tree_map_with_path(fill, shapes)


def packed_segments(rng, batch, length, max_segment):
  """Random packing: segments of random length, positions restarting at 0, and
  trailing padding (segment 0), as t5x's packing produces."""
  segments = np.zeros((batch, length), np.int32)
  positions = np.zeros((batch, length), np.int32)
  for b in range(batch):
    t, s = 0, 1
    end = length - int(rng.integers(0, 6))
    while t < end:
      size = min(int(rng.integers(1, max_segment + 1)), end - t)
      segments[b, t:t + size] = s
      positions[b, t:t + size] = np.arange(size)
      t, s = t + size, s + 1
  return segments, positions


def tiny_setup(batch: int, length: int, **overrides):
  """(cfg, model, params, tokens): a tiny model (TINY with `overrides`), its
  random weights and random tokens [batch, length]."""
  cfg = tiny_config(**overrides)
  model, params = init_params(cfg)
  return cfg, model, params, random_tokens(cfg, batch, length)


def rel_err(actual, expected, where=None) -> float:
  """max |actual - expected| / max |expected| over the selected entries."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  if where is not None:
    actual, expected = actual[where], expected[where]
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def unstack_layers(params, num_layers: int):
  """Scanned params (layers/... [L, ...]) -> unscanned (layers_0/..., ...)."""
  params = dict(params)
  stacked = params.pop("layers")
  for i in range(num_layers):
    params[f"layers_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
  return params


@functools.lru_cache(maxsize=None)
def _jitted_apply(model):
  return jax.jit(model.apply, static_argnames=("return_fam_state",))


def run(model, params, tokens, **kwargs):
  """model.apply under jit (one compile per model and shapes, then cached)."""
  return _jitted_apply(model)({"params": params}, tokens, **kwargs)


def without_adapters(params):
  """The base model's params: every lora_a/lora_b dropped."""
  if isinstance(params, dict):
    return {k: without_adapters(v) for k, v in params.items()
            if k not in ("lora_a", "lora_b")}
  return params


def run_on_cpu_devices(script: str, devices: int, timeout: float) -> None:
  """Runs `script` in a fresh Python with `devices` CPU devices (XLA_FLAGS must
  be set before JAX starts) and tests/ importable; it must print OK last."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(filter(None, [
      os.environ.get("XLA_FLAGS"),  # conftest's compile-time flags
      f"--xla_force_host_platform_device_count={devices}"])))
  env["PYTHONPATH"] = os.pathsep.join(
      [os.path.dirname(os.path.abspath(__file__)), env.get("PYTHONPATH", "")])
  result = subprocess.run([sys.executable, "-c", script], env=env,
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  assert result.stdout.strip().endswith("OK")
  print(result.stdout)  # what the script measured, shown with -s
