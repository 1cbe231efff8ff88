"""The paper's Adafactor (constant β2, momentum β1) against a NumPy reference;
schedules and config validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fam_jax.train.optimizer import (OptimizerConfig, constant_beta2_decay,
                                     learning_rate_schedule, make_optimizer)


def reference_adafactor(params, grads_per_step, lr, beta1, beta2, eps=1e-30,
                        clip=1.0, min_dim=128):
  """Adafactor written out: factored second moments of matrices whose two dims
  are >= min_dim, bias-corrected constant beta2, update RMS clipping, learning
  rate, then momentum (not debiased)."""
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  v = {}
  m = {k: np.zeros_like(p) for k, p in params.items()}
  sums = {"w": 0.0}
  for t, grads in enumerate(grads_per_step, start=1):
    # Bias correction: the estimate is the beta2-weighted mean of the t
    # squared gradients seen so far.
    weights_sum_prev = sums["w"]
    sums["w"] = beta2 * sums["w"] + 1.0
    decay = beta2 * weights_sum_prev / sums["w"]
    for k, g in grads.items():
      g = np.asarray(g, np.float64)
      g2 = g * g + eps
      if g.ndim == 2 and min(g.shape) >= min_dim:
        row, col = g2.mean(axis=1), g2.mean(axis=0)
        if k not in v:
          v[k] = (np.zeros_like(row), np.zeros_like(col))
        v_row = decay * v[k][0] + (1 - decay) * row
        v_col = decay * v[k][1] + (1 - decay) * col
        v[k] = (v_row, v_col)
        second = np.outer(v_row, v_col) / v_row.mean()
      else:
        v[k] = decay * v.get(k, np.zeros_like(g)) + (1 - decay) * g2
        second = v[k]
      u = g / np.sqrt(second)
      u = u / max(1.0, np.sqrt(np.mean(u * u)) / clip)
      m[k] = beta1 * m[k] + (1 - beta1) * lr * u
      params[k] = params[k] - m[k]
  return params


def test_adafactor_matches_reference():
  rng = np.random.default_rng(0)
  params = {"matrix": rng.normal(size=(128, 160)).astype(np.float32),
            "vector": rng.normal(size=(7,)).astype(np.float32),
            "small": rng.normal(size=(4, 130)).astype(np.float32)}
  grads = [{k: rng.normal(size=p.shape).astype(np.float32) * (1 + i)
            for k, p in params.items()} for i in range(4)]
  cfg = OptimizerConfig(name="adafactor", learning_rate=0.01, beta1=0.9,
                        beta2=0.99, grad_clip_norm=None)
  opt = make_optimizer(cfg, total_steps=10)
  state = opt.init(params)
  current = jax.tree_util.tree_map(jnp.asarray, params)
  for g in grads:
    updates, state = opt.update(g, state, current)
    current = optax.apply_updates(current, updates)
  want = reference_adafactor(params, grads, 0.01, 0.9, 0.99)
  for k in params:
    np.testing.assert_allclose(np.asarray(current[k]), want[k], rtol=2e-5,
                               atol=1e-6)


def test_constant_beta2_decay_is_adams_bias_correction():
  # decay_t = beta2 (1 - beta2^(t-1)) / (1 - beta2^t), t = step + 1.
  for step, beta2 in [(0, 0.99), (1, 0.99), (10, 0.9), (10_000, 0.99)]:
    t = step + 1
    want = beta2 * (1 - beta2 ** (t - 1)) / (1 - beta2 ** t)
    np.testing.assert_allclose(float(constant_beta2_decay(step, beta2)), want,
                               rtol=1e-5)
  assert float(constant_beta2_decay(0, 0.99)) == 0.0
  np.testing.assert_allclose(float(constant_beta2_decay(100_000, 0.99)), 0.99,
                             rtol=1e-5)


def test_global_norm_clipping_comes_first():
  cfg = OptimizerConfig(name="adamw", learning_rate=1.0, grad_clip_norm=1.0,
                        beta1=0.0, beta2=0.0)
  opt = make_optimizer(cfg, total_steps=1)
  params = {"w": jnp.zeros(4)}
  grads = {"w": jnp.asarray([30.0, 40.0, 0.0, 0.0])}  # norm 50
  # Adam with beta1=beta2=0 steps by sign; clipping first only rescales.
  updates, _ = opt.update(grads, opt.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w"]), [-1, -1, 0, 0], atol=1e-6)


def test_schedules():
  warm = learning_rate_schedule(
      OptimizerConfig(learning_rate=1.0, warmup_steps=10), 100)
  assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(0.5)
  assert float(warm(10)) == pytest.approx(1.0)
  assert float(warm(99)) == pytest.approx(1.0)  # the paper's constant rate
  cosine = learning_rate_schedule(
      OptimizerConfig(learning_rate=1.0, schedule="cosine"), 100)
  assert float(cosine(50)) == pytest.approx(0.5, abs=1e-6)
  linear = learning_rate_schedule(
      OptimizerConfig(learning_rate=2.0, schedule="linear", warmup_steps=20), 120)
  assert float(linear(70)) == pytest.approx(1.0)


@pytest.mark.parametrize("field,value,message", [
    ("name", "sgd", "OptimizerConfig.name must be one of"),
    ("schedule", "step", "OptimizerConfig.schedule must be one of"),
    ("learning_rate", 0.0, "OptimizerConfig.learning_rate must be a number > 0"),
    ("beta2", 1.0, r"OptimizerConfig.beta2 must be a number in \[0, 1\)"),
    ("clip_update_rms", 0.5, "OptimizerConfig.clip_update_rms must be None or"),
    ("warmup_steps", -1, "OptimizerConfig.warmup_steps must be an integer >= 0"),
])
def test_config_errors_name_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    OptimizerConfig(**{field: value})
