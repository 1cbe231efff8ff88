"""The streaming path computes what the training path computes, in constant memory."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fam_jax import checkpoint, streaming
from util import (init_params, random_tokens, rel_err, run, tiny_config,
                  tiny_setup)

TOL = 1e-5

# (attention, block_size, memory_segments, fam_length, num_kv_heads, length)
CASES = [
    ("full", 4, 0, 1, 2, 21),
    ("bswa", 4, 1, 1, 2, 45),    # many blocks, ends mid-block
    ("bswa", 8, 3, 1, 4, 64),
    ("fam", 4, 0, 2, 2, 38),
    ("fam", 4, 2, 4, 1, 53),
    ("fam", 8, 3, 8, 4, 67),
]


@pytest.mark.parametrize("attention,n,m,f,kv,length", CASES)
@pytest.mark.parametrize("residual", ["zero", "initial"])
def test_prefill_equals_training_path(attention, n, m, f, kv, length, residual):
  if residual == "initial" and attention != "fam":
    pytest.skip("first_fam_residual matters only for attention='fam'")
  cfg, model, params, tokens = tiny_setup(3, length, attention=attention,
                                          block_size=n, memory_segments=m,
                                          fam_length=f, num_kv_heads=kv,
                                          first_fam_residual=residual)
  expected = np.asarray(run(model, params, tokens))
  # Streams of different lengths in one batch: they fall out of block phase.
  lengths = np.array([length, length - 5, 7])
  state = streaming.init_state(params, cfg, 3, capacity=128)
  logits, state = streaming.prefill(params, cfg, state, tokens, lengths=lengths,
                                    return_all_logits=True)
  for b, size in enumerate(lengths):
    assert rel_err(logits[b, :size], expected[b, :size]) <= TOL
  np.testing.assert_array_equal(np.asarray(state.position), lengths)


@pytest.mark.parametrize("attention", ["full", "bswa", "fam"])
def test_chunks_and_decode_steps_equal_one_prefill(attention):
  cfg, model, params, tokens = tiny_setup(2, 30, attention=attention,
                                          block_size=4, memory_segments=1,
                                          fam_length=2)
  expected = np.asarray(run(model, params, tokens))
  state = streaming.init_state(params, cfg, 2, capacity=64)
  pieces = []
  for start, stop in [(0, 3), (3, 10), (10, 11), (11, 22)]:
    logits, state = streaming.prefill(params, cfg, state, tokens[:, start:stop],
                                      return_all_logits=True, chunk_size=3)
    pieces.append(logits)
  for t in range(22, 30):
    logits, state = streaming.decode_step(params, cfg, state, tokens[:, t])
    pieces.append(np.asarray(logits)[:, None])
  assert rel_err(np.concatenate(pieces, axis=1), expected) <= TOL


def test_last_token_logits_and_inactive_streams():
  cfg, model, params, tokens = tiny_setup(2, 13, attention="fam", block_size=4,
                                          memory_segments=1, fam_length=2)
  expected = np.asarray(run(model, params, tokens))
  state = streaming.init_state(params, cfg, 2)
  last, state = streaming.prefill(params, cfg, state, tokens[:, :12],
                                  lengths=[12, 9])
  assert rel_err(last[0], expected[0, 11]) <= TOL
  assert rel_err(last[1], expected[1, 8]) <= TOL
  # Stream 1 sits out a decode step: its state does not move.
  before = np.asarray(state.position)
  logits, state = streaming.decode_step(params, cfg, state, tokens[:, 12],
                                        active=[True, False])
  assert rel_err(logits[0], expected[0, 12]) <= TOL
  np.testing.assert_array_equal(np.asarray(state.position), before + [1, 0])


def test_passed_training_state_matches_stream_state():
  """The FAM a stream holds after whole blocks is the FAM the training path
  returns for the same tokens."""
  cfg, model, params, tokens = tiny_setup(2, 24, attention="fam", block_size=4,
                                          memory_segments=2, fam_length=3)
  _, fam = run(model, params, tokens, return_fam_state=True)
  state = streaming.init_state(params, cfg, 2)
  _, state = streaming.prefill(params, cfg, state, tokens)
  assert rel_err(state.fam, fam) <= TOL


def test_bad_inputs_are_refused():
  cfg = tiny_config(attention="fam", block_size=4, fam_length=2)
  _, params = init_params(cfg)
  state = streaming.init_state(params, cfg, 1)
  with pytest.raises(ValueError, match="empty prompt"):
    streaming.prefill(params, cfg, state, np.zeros((1, 0), np.int32))
  with pytest.raises(ValueError, match=r"token id 61 .* outside the vocabulary"):
    streaming.prefill(params, cfg, state, np.array([[1, 61, 2]]))
  with pytest.raises(ValueError, match=r"token id -1 .* outside"):
    streaming.decode_step(params, cfg, state, [-1])
  other = cfg.replace(fam_length=3)
  with pytest.raises(ValueError, match="does not belong to this model"):
    streaming.prefill(params, other, state, np.array([[1, 2]]))
  full = tiny_config(attention="full")
  _, full_params = init_params(full)
  with pytest.raises(ValueError, match="capacity"):
    streaming.init_state(full_params, full, 1)
  small = streaming.init_state(full_params, full, 1, capacity=4)
  with pytest.raises(ValueError, match="capacity 4 exceeded"):
    streaming.prefill(full_params, full, small, np.ones((1, 5), np.int32))


def test_lengths_and_token_dtypes_are_checked():
  cfg = tiny_config(attention="fam", block_size=4, fam_length=2)
  _, params = init_params(cfg)
  state = streaming.init_state(params, cfg, 2)
  tokens = random_tokens(cfg, 2, 120)
  with pytest.raises(ValueError, match=r"one length per stream, shape \(2,\); "
                     r"got shape \(1,\)"):
    streaming.prefill(params, cfg, state, tokens, lengths=[10])
  with pytest.raises(ValueError, match=r"lengths must be integers; got \[50.7, "
                     r"100.0\]"):
    streaming.prefill(params, cfg, state, tokens, lengths=[50.7, 100])
  with pytest.raises(ValueError, match="token ids must be integers; got dtype "
                     "float32"):
    streaming.prefill(params, cfg, state, tokens.astype(np.float32) + 0.5)
  with pytest.raises(ValueError, match="token ids must be integers"):
    streaming.decode_step(params, cfg, state, [1.5, 2.0])


def test_saved_state_refuses_another_config(tmp_path):
  cfg = tiny_config(attention="fam", block_size=4, fam_length=2)
  _, params = init_params(cfg)
  state = streaming.init_state(params, cfg, 1)
  streaming.save_state(str(tmp_path), state, cfg, params=params)
  with pytest.raises(ValueError, match="memory_segments: saved 3, model 1"):
    streaming.load_state(str(tmp_path), cfg.replace(memory_segments=1),
                         params=params)
  with pytest.raises(FileNotFoundError, match="not a saved StreamState"):
    streaming.load_state(str(tmp_path / "nothing"), cfg, params=params)


def test_saved_state_refuses_other_weights_and_an_existing_destination(tmp_path):
  cfg = tiny_config(attention="fam", block_size=4, fam_length=2)
  _, params = init_params(cfg)
  _, other = init_params(cfg, seed=2)  # same config, other weights
  state = streaming.init_state(params, cfg, 1, start_position=7)
  streaming.save_state(str(tmp_path / "s"), state, cfg, params=params)
  with pytest.raises(ValueError, match="saved with other weights"):
    streaming.load_state(str(tmp_path / "s"), cfg, params=other)
  resumed = streaming.load_state(str(tmp_path / "s"), cfg, params=params)
  assert int(resumed.position[0]) == 7
  # A second save is refused before anything is written, then replaced only
  # with overwrite=True.
  later = streaming.init_state(params, cfg, 1, start_position=9)
  with pytest.raises(FileExistsError, match="already holds a saved stream state"):
    streaming.save_state(str(tmp_path / "s"), later, cfg, params=params)
  assert int(streaming.load_state(str(tmp_path / "s"), cfg,
                                  params=params).position[0]) == 7
  streaming.save_state(str(tmp_path / "s"), later, cfg, params=params,
                       overwrite=True)
  assert int(streaming.load_state(str(tmp_path / "s"), cfg,
                                  params=params).position[0]) == 9
  assert os.listdir(tmp_path) == ["s"]  # no temporary directory left


@pytest.mark.parametrize("attention", ["full", "bswa", "fam"])
def test_saved_state_of_every_kind_round_trips(tmp_path, attention):
  """bswa and full states hold arrays of size 0 (no FAM; no ring for full),
  which orbax alone refuses to save."""
  cfg = tiny_config(attention=attention, block_size=4, fam_length=2)
  _, params = init_params(cfg)
  state = streaming.init_state(params, cfg, 2, capacity=16)
  _, state = streaming.prefill(params, cfg, state, random_tokens(cfg, 2, 7))
  streaming.save_state(str(tmp_path), state, cfg, params=params)
  restored = streaming.load_state(str(tmp_path), cfg, params=params)
  for name, value in state._asdict().items():
    np.testing.assert_array_equal(getattr(restored, name), value, err_msg=name)
    assert getattr(restored, name).dtype == value.dtype, name


_RESUME = textwrap.dedent("""
    import sys
    import numpy as np
    from fam_jax import checkpoint, streaming
    params, cfg = checkpoint.load_checkpoint(sys.argv[1])
    state = streaming.load_state(sys.argv[2], cfg, params=params)
    tail = np.load(sys.argv[3])
    logits, _ = streaming.prefill(params, cfg, state, tail, return_all_logits=True)
    np.save(sys.argv[4], logits)
""")


def test_stream_saved_after_100k_tokens_resumes_identically(tmp_path):
  cfg = tiny_config(attention="fam", block_size=64, memory_segments=1,
                    fam_length=8, num_kv_heads=2)
  _, params = init_params(cfg)
  checkpoint.save_checkpoint(str(tmp_path / "model"), params, cfg)
  history = random_tokens(cfg, 1, 100_003, seed=7)
  tail = random_tokens(cfg, 1, 70, seed=8)
  state = streaming.init_state(params, cfg, 1)
  _, state = streaming.prefill(params, cfg, state, history)
  streaming.save_state(str(tmp_path / "stream"), state, cfg, params=params)
  expected, _ = streaming.prefill(params, cfg, state, tail, return_all_logits=True)
  np.save(tmp_path / "tail.npy", tail)
  result = subprocess.run(
      [sys.executable, "-c", _RESUME, str(tmp_path / "model"),
       str(tmp_path / "stream"), str(tmp_path / "tail.npy"),
       str(tmp_path / "resumed.npy")],
      capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  np.testing.assert_array_equal(np.load(tmp_path / "resumed.npy"), expected)


_MEMORY = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from fam_jax import FamConfig, FamLM, streaming
    cfg = FamConfig(vocab_size=259, num_layers=2, d_model=256, num_heads=4,
                    num_kv_heads=4, mlp_dim=256, attention="fam", block_size=256,
                    memory_segments=1, fam_length=16)
    params = jax.jit(FamLM(cfg).init)(jax.random.PRNGKey(0),
                                      jnp.zeros((1, 1), jnp.int32))["params"]
    lengths = [int(n) for n in sys.argv[1:]]
    tokens = np.random.default_rng(0).integers(0, 259, (1, sum(lengths)))
    state, start = streaming.init_state(params, cfg, 1), 0
    for n in lengths:  # one stream, prefilled a piece at a time
      logits, state = streaming.prefill(params, cfg, state,
                                        tokens[:, start:start + n])
      jax.block_until_ready(logits)
      start += n
      # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child
      # of a large pytest process would report the parent's peak.
      print(next(line.split()[1] for line in open("/proc/self/status")
                 if line.startswith("VmHWM:")))
""")


def _peak_rss_kib(*lengths: int) -> list[int]:
  """The process's peak RSS after each piece of one stream."""
  result = subprocess.run([sys.executable, "-c", _MEMORY, *map(str, lengths)],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  return [int(x) for x in result.stdout.split()[-len(lengths):]]


def test_prefill_memory_does_not_grow_with_length(capsys):
  """Streaming 56k more tokens after the first 8k (compilation, the state and
  XLA's buffers all in place by then) leaves the peak RSS where it was: within
  a tenth of what a KV cache of those tokens would add (2 layers x 2 x 4 heads
  x 64 x 4 B = 4 KiB per token, 224 MiB). One process, so the peak's
  run-to-run spread (~60 MiB between fresh processes, the same at 8k and 64k)
  does not enter; the growth measured here: 1-8 MiB."""
  first, more = 8192, 57344
  short, long = _peak_rss_kib(first, more)
  with capsys.disabled():
    print(f"\n[streaming memory] peak RSS {short / 1024:.0f} MiB after 8k "
          f"tokens, {long / 1024:.0f} MiB after 64k tokens of the same stream")
  assert long - short <= 0.1 * more * 4


def test_one_compilation_serves_any_stream_length():
  cfg = tiny_config(attention="fam", block_size=4, memory_segments=1,
                    fam_length=2, num_layers=1, d_model=16, mlp_dim=16)
  _, params = init_params(cfg)
  before = streaming._jit_step._cache_size()
  for length in (5, 17, 40):
    state = streaming.init_state(params, cfg, 1)
    _, state = streaming.prefill(params, cfg, state,
                                 random_tokens(cfg, 1, length))
    for _ in range(6):
      _, state = streaming.decode_step(params, cfg, state, [1])
  # One executable for block-sized chunks, one for single tokens.
  assert streaming._jit_step._cache_size() - before == 2


def test_full_attention_reads_its_cache_in_tiles(monkeypatch):
  """attention='full' attends tile by tile (online softmax) over the filled
  tiles of its KV cache: with 16-slot tiles and a 100-slot capacity (its last
  tile reads back over the one before), streams of different lengths, chunks
  that end mid-tile and single decode steps equal the training path; and one
  executable serves every decode step, however full the cache."""
  monkeypatch.setattr(streaming, "CACHE_TILE", 16)
  cfg, model, params, tokens = tiny_setup(2, 99, attention="full",
                                          num_kv_heads=1, d_model=24)
  expected = np.asarray(run(model, params, tokens))
  streaming._jit_step.clear_cache()  # traced with the default tile elsewhere
  state = streaming.init_state(params, cfg, 2, capacity=100)
  logits, state = streaming.prefill(params, cfg, state, tokens[:, :70],
                                    lengths=[70, 37], return_all_logits=True,
                                    chunk_size=24)
  assert rel_err(logits[0], expected[0, :70]) <= TOL
  assert rel_err(logits[1, :37], expected[1, :37]) <= TOL
  before = streaming._jit_step._cache_size()
  for t in range(70, 99):
    logits, state = streaming.decode_step(params, cfg, state, tokens[:, t],
                                          active=[True, t < 80])
    assert rel_err(logits[0], expected[0, t]) <= TOL
  assert streaming._jit_step._cache_size() - before == 1
  streaming._jit_step.clear_cache()


def test_prefill_computes_its_last_piece_in_a_narrower_step(monkeypatch):
  """The piece left after the full-width steps gets a step of the next power
  of two at or above it (not a 32-wide step for 6 tokens), and the logits
  still equal the training path's."""
  cfg, model, params, tokens = tiny_setup(1, 70, attention="full",
                                          num_kv_heads=1, d_model=24)
  expected = np.asarray(run(model, params, tokens))
  widths, step = [], streaming._jit_step
  monkeypatch.setattr(streaming, "_jit_step", lambda p, s, chunk, *a: (
      widths.append(chunk.shape[1]) or step(p, s, chunk, *a)))
  state = streaming.init_state(params, cfg, 1, capacity=80)
  logits, state = streaming.prefill(params, cfg, state, tokens,
                                    return_all_logits=True, chunk_size=32)
  assert widths == [32, 32, 8]
  assert rel_err(logits, expected) <= TOL
