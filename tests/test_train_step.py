"""The train step: random state passing and position offset as the paper says,
gradient accumulation, and LoRA freezing the base model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fam_jax import FamLM, sharding
from fam_jax.train import init as train_init
from fam_jax.train import step as train_step
from fam_jax.train.config import TrainConfig
from fam_jax.train.loss import weighted_cross_entropy
from fam_jax.train.optimizer import (OptimizerConfig, learning_rate_schedule,
                                     make_optimizer)
from util import init_params, rel_err, tiny_config

B, T = 4, 40  # 5 blocks of 8


def make_batch(cfg, seed=0, batch=B, length=T):
  rng = np.random.default_rng(seed)
  targets = rng.integers(1, cfg.vocab_size, (batch, length)).astype(np.int32)
  inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], 1)
  weights = rng.choice([0.0, 0.1, 1.0], (batch, length)).astype(np.float32)
  return {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
          "decoder_segment_ids": np.ones((batch, length), np.int32),
          "decoder_positions": np.tile(np.arange(length, dtype=np.int32),
                                       (batch, 1)),
          "decoder_loss_weights": weights}


@functools.lru_cache(maxsize=None)
def _setup(finetune, train_fields):
  train_fields = dict(train_fields)
  cfg = tiny_config(attention="fam", block_size=8, memory_segments=1,
                    fam_length=4, lora_rank=4, init_std=0.5)
  train_cfg = TrainConfig(batch_size=B, sequence_length=T, finetune=finetune,
                          train_steps=10,
                          optimizer=OptimizerConfig(learning_rate=1e-2),
                          **train_fields)
  optimizer = make_optimizer(train_cfg.optimizer, train_cfg.train_steps)
  layout = train_init.make_layout(cfg, train_cfg, sharding.make_mesh(), optimizer)
  _, params = init_params(cfg)
  state = train_init.initial_state(params, cfg, train_cfg, optimizer, layout)
  mask = train_init.trainable_mask(params, train_cfg, cfg)
  step = jax.jit(train_step.make_train_step(
      cfg, train_cfg, optimizer, mask,
      learning_rate_schedule(train_cfg.optimizer, train_cfg.train_steps)))
  return cfg, train_cfg, state, step


def setup(finetune="lora", **train_fields):
  """(model config, TrainConfig, step-0 state, jitted step), cached: tests
  that share a configuration share one compiled step. By default every row
  gets a random position offset."""
  fields = {"zero_offset_probability": 0.0, **train_fields}
  return _setup(finetune, tuple(sorted(fields.items())))


@functools.lru_cache(maxsize=None)
def _apply(cfg):
  return jax.jit(FamLM(cfg).apply, static_argnames=("return_fam_state",))


def forward(cfg, params, tokens, **kwargs):
  return _apply(cfg)({"params": params}, tokens, **kwargs)


def step_inputs(state, batch, cfg, train_cfg):
  """The inputs the step draws, from the same key split as the step."""
  _, step_rng = jax.random.split(state.rng)
  return train_step.training_inputs(batch, state, step_rng, cfg, train_cfg)


def draw(state, batch, cfg, train_cfg, count):
  """training_inputs under `count` different keys (vmapped: one compile)."""
  keys = jax.random.split(jax.random.PRNGKey(7), count)
  return jax.jit(jax.vmap(lambda key: train_step.training_inputs(
      batch, state, key, cfg, train_cfg)))(keys)


def test_fam_passes_from_step_to_step():
  cfg, train_cfg, state, step = setup()
  batches = [make_batch(cfg, seed) for seed in range(3)]
  assert not bool(state.fam_valid)
  inputs = step_inputs(state, batches[0], cfg, train_cfg)
  assert not np.asarray(inputs.fam_state_valid).any()  # nothing to pass yet
  for t in range(2):
    params = state.params
    inputs = step_inputs(state, batches[t], cfg, train_cfg)
    state, _ = step(state, batches[t])
    # The state holds step t's final FAM, computed on its inputs.
    _, final = forward(cfg, params, batches[t]["decoder_input_tokens"],
                       segment_ids=batches[t]["decoder_segment_ids"],
                       position_offset=inputs.position_offset,
                       fam_state=inputs.fam_state,
                       fam_state_valid=inputs.fam_state_valid,
                       return_fam_state=True)
    assert rel_err(state.fam, final) < 1e-5
  # Step t+1: the rows kept start from step t's final FAM (the paper shares
  # row 0's), the others from the learned initial FAM.
  nxt = step_inputs(state, batches[2], cfg, train_cfg)
  tokens = batches[2]["decoder_input_tokens"]
  got = forward(cfg, state.params, tokens, fam_state=nxt.fam_state,
                fam_state_valid=nxt.fam_state_valid)
  passed = forward(cfg, state.params, tokens,
                   fam_state=jnp.broadcast_to(state.fam[:, :1], state.fam.shape))
  fresh = forward(cfg, state.params, tokens)
  assert rel_err(passed, fresh) > 1e-3  # passing a FAM changes the logits
  for row, kept in enumerate(np.asarray(nxt.fam_state_valid)):
    want = passed if kept else fresh
    assert rel_err(got[row], want[row]) < 1e-5


@pytest.mark.parametrize("share", [True, False])
def test_state_passing_probability(share):
  cfg, train_cfg, state, _ = setup()
  train_cfg = train_cfg.replace(share_first_example=share,
                                state_passing_probability=0.8)
  state = state.replace(fam_valid=jnp.ones((), bool))  # a step has run
  draws = np.asarray(draw(state, make_batch(cfg), cfg, train_cfg, 1000
                          ).fam_state_valid)
  assert abs(draws.mean() - 0.8) < 0.04
  if share:
    assert (draws == draws[:, :1]).all()  # one coin for the whole batch
  else:
    assert (draws != draws[:, :1]).any()


def test_position_offset_changes_positions_only():
  cfg, train_cfg, state, step = setup()
  batch = make_batch(cfg)
  inputs = step_inputs(state, batch, cfg, train_cfg)
  offset = np.asarray(inputs.position_offset)
  assert offset.shape == (B,) and (offset > 0).all()
  np.testing.assert_array_equal(inputs.tokens, batch["decoder_input_tokens"])
  np.testing.assert_array_equal(inputs.positions, batch["decoder_positions"])
  _, metrics = step(state, batch)
  # The step's loss: the same tokens, targets and weights at shifted positions.
  logits = forward(cfg, state.params, batch["decoder_input_tokens"],
                   positions=batch["decoder_positions"] + offset[:, None],
                   segment_ids=batch["decoder_segment_ids"],
                   fam_state=inputs.fam_state,
                   fam_state_valid=inputs.fam_state_valid)
  sums = weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                batch["decoder_loss_weights"])
  np.testing.assert_allclose(float(metrics["loss"]),
                             float(sums.loss / sums.weight), rtol=1e-5)
  draws = np.asarray(draw(state, batch, cfg,
                          train_cfg.replace(zero_offset_probability=0.5),
                          500).position_offset)
  assert abs((draws == 0).mean() - 0.5) < 0.05


def test_gradient_accumulation_equals_the_whole_batch():
  cfg, _, state1, step1 = setup()
  _, _, state2, step2 = setup(grad_accumulation_steps=2)
  batches = [make_batch(cfg, seed) for seed in range(2)]
  for batch in batches:
    state1, m1 = step1(state1, batch)
    state2, m2 = step2(state2, batch)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(state1.params),
                  jax.tree_util.tree_leaves(state2.params)):
    assert rel_err(b, a) < 1e-5
  assert rel_err(state2.fam, state1.fam) < 1e-5


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_lora_trains_adapters_and_summarization_only(finetune):
  cfg, _, state, step = setup(finetune=finetune)
  before = jax.tree_util.tree_map(np.asarray, state.params)
  state, _ = step(state, make_batch(cfg))
  after = state.params
  flat_before = jax.tree_util.tree_leaves_with_path(before)
  flat_after = dict(jax.tree_util.tree_leaves_with_path(after))
  for path, old in flat_before:
    name = jax.tree_util.keystr(path)
    changed = not np.array_equal(old, np.asarray(flat_after[path]))
    adapter = "lora_" in name or "summarization" in name
    if finetune == "lora":
      assert changed == adapter, name
    else:
      assert changed, name
