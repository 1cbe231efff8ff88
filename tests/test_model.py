"""FamLM against the naive Algorithm-2 reference, and its structural properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fam_jax import FamLM
from reference import reference_forward
from util import (init_params, packed_segments, random_tokens, rel_err, run,
                  tiny_config, tiny_setup, unstack_layers)

TOL = 1e-5  # max relative error vs the float64 reference (issue #2)

# (attention, block_size, memory_segments, fam_length, num_kv_heads, length)
REFERENCE_CASES = [
    ("fam", 4, 0, 1, 4, 16),    # MHA, m=0, F=1, multiple of the block size
    ("fam", 4, 1, 4, 2, 19),    # GQA, partial last block
    ("fam", 8, 3, 4, 1, 45),    # MQA, m=3
    ("fam", 16, 1, 16, 2, 40),  # F = N
    ("fam", 16, 3, 16, 4, 64),
    ("fam", 8, 3, 1, 2, 70),
    ("fam", 8, 1, 4, 4, 5),     # shorter than one block
    ("bswa", 4, 0, 0, 2, 13),
    ("bswa", 8, 3, 0, 4, 50),
    ("bswa", 4, 1, 0, 1, 16),
    ("full", 8, 0, 0, 2, 23),
]


@pytest.mark.parametrize("attention,n,m,f,kv,length", REFERENCE_CASES)
def test_matches_reference(attention, n, m, f, kv, length):
  cfg, model, params, tokens = tiny_setup(2, length, attention=attention,
                                          block_size=n, memory_segments=m,
                                          fam_length=max(f, 1), num_kv_heads=kv)
  expected, expected_fam = reference_forward(params, cfg, tokens)
  if attention == "fam":
    logits, fam = run(model, params, tokens, return_fam_state=True)
    assert rel_err(fam, expected_fam) <= TOL
  else:
    logits = run(model, params, tokens)
  assert logits.shape == (2, length, cfg.vocab_size)
  assert rel_err(logits, expected) <= TOL


@pytest.mark.parametrize("variant", [
    dict(norm="layernorm", activation="geglu", tie_embeddings=False),
    dict(scale_embeddings=True, norm_scale_offset=1.0, rope_theta=500.0),
    dict(lora_rank=3, lora_alpha=6.0, lora_targets=("q", "v", "o", "down")),
    dict(scan_layers=False, remat="none", num_layers=3),
    dict(first_fam_residual="initial"),
])
def test_architecture_variants_match_reference(variant):
  cfg, model, params, tokens = tiny_setup(2, 29, attention="fam", block_size=8,
                                          memory_segments=1, fam_length=4,
                                          num_kv_heads=2, **variant)
  expected, expected_fam = reference_forward(params, cfg, tokens)
  logits, fam = run(model, params, tokens, return_fam_state=True)
  assert rel_err(logits, expected) <= TOL
  assert rel_err(fam, expected_fam) <= TOL


@pytest.mark.parametrize("attention,n,m,f,residual", [
    ("fam", 4, 1, 2, "zero"), ("fam", 8, 0, 4, "zero"), ("fam", 4, 3, 4, "zero"),
    ("fam", 4, 1, 2, "initial"), ("bswa", 4, 2, 0, "zero"),
    ("full", 4, 0, 0, "zero")])
def test_packed_inputs_match_reference(attention, n, m, f, residual):
  cfg, model, params, tokens = tiny_setup(3, 37, attention=attention,
                                          block_size=n, memory_segments=m,
                                          fam_length=max(f, 1), num_kv_heads=2,
                                          first_fam_residual=residual)
  segments, positions = packed_segments(np.random.default_rng(n + m), 3, 37,
                                         3 * n)
  expected, _ = reference_forward(params, cfg, tokens, positions=positions,
                                  segment_ids=segments)
  logits = run(model, params, tokens, positions=positions, segment_ids=segments)
  assert rel_err(logits, expected, where=segments != 0) <= TOL


def test_unrolled_fam_scan_matches_reference():
  """fam_scan_unroll=3 over 10 blocks (three unrolled iterations and a
  remainder of one), packed inputs."""
  cfg, model, params, tokens = tiny_setup(3, 37, attention="fam", block_size=4,
                                          memory_segments=1, fam_length=2,
                                          num_kv_heads=2, fam_scan_unroll=3)
  segments, positions = packed_segments(np.random.default_rng(3), 3, 37, 12)
  expected, _ = reference_forward(params, cfg, tokens, positions=positions,
                                  segment_ids=segments)
  logits = run(model, params, tokens, positions=positions, segment_ids=segments)
  assert rel_err(logits, expected, where=segments != 0) <= TOL


def test_packed_segments_are_isolated():
  """Changing one example of a packed row changes no logit of another example,
  through tokens or through FAM."""
  cfg = tiny_config(attention="fam", block_size=4, memory_segments=2,
                    fam_length=2)
  model, params = init_params(cfg)
  segments = np.array([[1] * 9 + [2] * 3 + [3] * 14 + [0] * 3], np.int32)
  positions = np.concatenate([np.arange(9), np.arange(3), np.arange(14),
                              np.zeros(3)]).astype(np.int32)[None]
  tokens = random_tokens(cfg, 1, segments.shape[1])
  changed = tokens.copy()
  changed[segments == 2] = (changed[segments == 2] + 7) % cfg.vocab_size
  logits = lambda t: np.asarray(run(model, params, t, positions=positions,
                                    segment_ids=segments))
  before, after = logits(tokens), logits(changed)
  others = segments != 2
  np.testing.assert_array_equal(before[others], after[others])
  assert np.abs(before[segments == 2] - after[segments == 2]).max() > 1e-3


def test_position_offset_and_passed_state_match_reference():
  cfg, model, params, tokens = tiny_setup(2, 18, attention="fam", block_size=4,
                                          memory_segments=1, fam_length=3,
                                          num_kv_heads=2)
  state = jax.random.normal(jax.random.PRNGKey(5), (2, 2, 3, cfg.d_model))
  valid = np.array([True, False])
  offset = np.array([12345, 0], np.int32)
  expected, expected_fam = reference_forward(
      params, cfg, tokens, position_offset=offset, fam_state=state,
      fam_state_valid=valid)
  logits, fam = run(model, params, tokens, position_offset=offset,
                            fam_state=state, fam_state_valid=valid,
                            return_fam_state=True)
  assert rel_err(logits, expected) <= TOL
  assert rel_err(fam, expected_fam) <= TOL


def test_bswa_with_one_block_equals_full():
  full = tiny_config(attention="full")
  bswa = tiny_config(attention="bswa", block_size=32, memory_segments=0)
  _, params = init_params(full)
  tokens = random_tokens(full, 2, 27)
  a = run(FamLM(full), params, tokens)
  b = run(FamLM(bswa), params, tokens)
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("attention", ["full", "bswa", "fam"])
def test_causality(attention):
  cfg, model, params, tokens = tiny_setup(1, 22, attention=attention,
                                          block_size=4, memory_segments=1,
                                          fam_length=2)
  base = np.asarray(run(model, params, tokens))
  for t in (0, 5, 8, 13, 21):
    changed = tokens.copy()
    changed[0, t] = (changed[0, t] + 1) % cfg.vocab_size
    out = np.asarray(run(model, params, changed))
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    assert np.abs(out[:, t] - base[:, t]).max() > 0


def _last_logit_change(model, params, tokens, t):
  changed = tokens.copy()
  changed[0, t] = (changed[0, t] + 1) % model.cfg.vocab_size
  a = run(model, params, tokens)[0, -1]
  b = run(model, params, changed)[0, -1]
  return float(jnp.abs(a - b).max())


def test_bswa_receptive_field_is_exact():
  """With L layers and m memory segments, the last token sees exactly the blocks
  τ-L·m .. τ: one token further back has no influence at all (so neither has
  anything further than L·(m+1)·N tokens back)."""
  n, m, layers = 4, 1, 2
  cfg = tiny_config(attention="bswa", block_size=n, memory_segments=m,
                    num_layers=layers)
  model, params = init_params(cfg)
  length = 9 * n
  tokens = random_tokens(cfg, 1, length)
  last_block = (length - 1) // n
  first_seen = (last_block - layers * m) * n  # first token of block τ - L·m
  assert _last_logit_change(model, params, tokens, first_seen - 1) == 0.0
  assert _last_logit_change(model, params, tokens, first_seen) > 0.0
  far = length - 1 - layers * (m + 1) * n - 1
  assert _last_logit_change(model, params, tokens, far) == 0.0
  assert _last_logit_change(model, params, tokens, 0) == 0.0


def test_fam_reaches_beyond_the_window():
  n, m, layers = 4, 1, 2
  cfg, model, params, tokens = tiny_setup(1, 9 * n, attention="fam",
                                          block_size=n, memory_segments=m,
                                          num_layers=layers, fam_length=2)
  assert _last_logit_change(model, params, tokens, 0) > 1e-6


def test_padding_never_reaches_real_tokens():
  """Padding (segment 0) tokens can be anything: real logits and the final FAM
  do not change."""
  cfg, model, params, tokens = tiny_setup(2, 19, attention="fam", block_size=4,
                                          memory_segments=1, fam_length=2)
  segments = np.ones_like(tokens)
  segments[:, 13:] = 0
  other = tokens.copy()
  other[:, 13:] = (other[:, 13:] + 3) % cfg.vocab_size
  forward = lambda t: run(model, params, t, segment_ids=segments,
                              return_fam_state=True)
  (a, fam_a), (b, fam_b) = forward(tokens), forward(other)
  np.testing.assert_array_equal(np.asarray(a)[:, :13], np.asarray(b)[:, :13])
  np.testing.assert_array_equal(fam_a, fam_b)
  # The same as running the real tokens alone.
  alone, fam_alone = run(model, params, tokens[:, :13],
                                 return_fam_state=True)
  np.testing.assert_allclose(np.asarray(a)[:, :13], alone, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fam_a, fam_alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scanned_and_unrolled_layers_agree(remat):
  cfg, model, params, tokens = tiny_setup(2, 14, attention="fam", block_size=4,
                                          memory_segments=1, fam_length=2,
                                          remat=remat)
  scanned = run(model, params, tokens)
  unrolled_cfg = cfg.replace(scan_layers=False)
  unrolled = run(FamLM(unrolled_cfg), unstack_layers(params, cfg.num_layers),
                 tokens)
  assert rel_err(unrolled, scanned) <= 1e-6


@pytest.mark.parametrize("attention", ["full", "bswa", "fam"])
def test_position_offset_is_a_pure_translation(attention):
  """RoPE is relative and FAM positions follow the tokens, so shifting every
  position leaves the logits unchanged (up to float32 rounding of the angles)."""
  cfg, model, params, tokens = tiny_setup(2, 17, attention=attention,
                                          block_size=4, memory_segments=1,
                                          fam_length=2)
  a = run(model, params, tokens)
  b = run(model, params, tokens,
                  position_offset=np.array([777, 30_000], np.int32))
  assert rel_err(b, a) < 1e-3


def test_passed_state_continues_a_sequence():
  """With m=0 a block sees only its FAM and itself, so a sequence split at a
  block boundary and resumed from the returned FAM gives the same logits."""
  cfg, model, params, tokens = tiny_setup(2, 22, attention="fam", block_size=4,
                                          memory_segments=0, fam_length=3)
  whole = run(model, params, tokens)
  head, fam = run(model, params, tokens[:, :12],
                          return_fam_state=True)
  positions = np.tile(np.arange(12, 22), (2, 1))
  tail = run(model, params, tokens[:, 12:], positions=positions,
                     fam_state=fam)
  assert rel_err(np.concatenate([head, tail], axis=1), whole) <= TOL


def test_bad_inputs_are_rejected():
  cfg, model, params, tokens = tiny_setup(1, 8, attention="bswa", block_size=4)
  with pytest.raises(ValueError, match="attention='fam'"):
    run(model, params, tokens, return_fam_state=True)
  with pytest.raises(ValueError, match="positions"):
    run(model, params, tokens, positions=np.zeros((1, 7), np.int32))
  with pytest.raises(ValueError, match="tokens"):
    run(model, params, tokens[0])
  fam_cfg = tiny_config(attention="fam", block_size=4, fam_length=2)
  fam_model, fam_params = init_params(fam_cfg)
  with pytest.raises(ValueError, match="fam_state"):
    run(fam_model, fam_params, tokens,
                    fam_state=np.zeros((2, 1, 3, 32), np.float32))


def test_token_ids_are_checked_where_their_values_are_known():
  cfg = tiny_config(attention="bswa", block_size=4)
  model, params = init_params(cfg)
  variables = {"params": params}
  tokens = random_tokens(cfg, 2, 9)
  for bad in (61, -1, 1000):
    wrong = tokens.copy()
    wrong[1, 3] = bad
    with pytest.raises(ValueError, match=rf"token id {bad} at index \[1, 3\] is "
                       r"outside the vocabulary \[0, 61\)"):
      model.apply(variables, wrong)
  with pytest.raises(ValueError, match=r"whole numbers; got 2.5 at index \[0, 0\]"):
    model.apply(variables, np.full((1, 3), 2.5, np.float32))
  with pytest.raises(ValueError, match="must be integers; got dtype bool"):
    model.apply(variables, tokens > 5)
  # Whole-number floats (t5x initialises with float ones) are the same ids.
  np.testing.assert_allclose(model.apply(variables, tokens.astype(np.float32)),
                             run(model, params, tokens), rtol=1e-5, atol=1e-5)
  # Under jit the ids cannot be checked: as the docstring says, an id out of
  # range turns its row of logits into NaN; the other row is untouched.
  wrong = tokens.copy()
  wrong[1, 6] = 61
  logits = np.asarray(run(model, params, wrong))
  assert np.isnan(logits[1]).any() and np.isfinite(logits[0]).all()
