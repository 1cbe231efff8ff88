"""Generation: streaming + sampling against a recompute-everything loop; the CLI."""

import jax
import numpy as np
import pytest

from fam_jax import checkpoint, streaming
from fam_jax.cli.generate import main as generate_main
from fam_jax.generate import generate
from fam_jax.sampling import SamplingConfig, sample
from fam_jax.text.tokenizer import ByteTokenizer, IncrementalDecoder
from util import init_params, random_tokens, run, tiny_config


def test_greedy_generation_equals_recomputed_argmax():
  cfg = tiny_config(attention="fam", block_size=4, memory_segments=1,
                    fam_length=2)
  model, params = init_params(cfg)
  prompts = random_tokens(cfg, 2, 11)
  lengths = np.array([11, 6])
  result = generate(params, cfg, streaming.init_state(params, cfg, 2), prompts,
                    lengths=lengths, max_new_tokens=9)
  for b in range(2):
    # The slow way: the whole sequence through the training path per token.
    sequence = list(prompts[b, :lengths[b]])
    for _ in range(9):
      logits = run(model, params, np.asarray([sequence], np.int32))
      sequence.append(int(np.argmax(logits[0, -1])))
    assert result.tokens[b] == sequence[lengths[b]:]
  assert result.stopped == [False, False]


def test_stop_tokens_end_each_stream():
  cfg = tiny_config(attention="bswa", block_size=4, memory_segments=1)
  _, params = init_params(cfg)
  prompts = random_tokens(cfg, 2, 5)
  free = generate(params, cfg, streaming.init_state(params, cfg, 2), prompts,
                  max_new_tokens=6)
  stop = free.tokens[0][2]
  stopped = generate(params, cfg, streaming.init_state(params, cfg, 2), prompts,
                     max_new_tokens=6, stop_tokens=[stop])
  assert stopped.tokens[0] == free.tokens[0][:free.tokens[0].index(stop)]
  assert stopped.stopped[0]
  if stop not in free.tokens[1]:
    assert stopped.tokens[1] == free.tokens[1] and not stopped.stopped[1]


def test_byte_tokenizer_round_trip_and_incremental_utf8():
  tok = ByteTokenizer()
  text = "Größe → 猫"
  ids = tok.encode(text)
  assert all(3 <= i < 259 for i in ids) and tok.decode(ids) == text
  decoder = IncrementalDecoder(tok)
  pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
  assert "".join(pieces) == text
  assert "" in pieces  # a multi-byte character waits for its last byte


def test_byte_tokenizer_matches_seqio():
  seqio = pytest.importorskip("seqio")
  vocab = seqio.ByteVocabulary()
  text = "FAM: Größe"
  assert ByteTokenizer().encode(text) == list(vocab.encode(text))
  assert ByteTokenizer.eos_id == vocab.eos_id
  assert ByteTokenizer.vocab_size == vocab.vocab_size


def test_cli_generates_and_resumes(tmp_path, capsys):
  cfg = tiny_config(attention="fam", vocab_size=259, block_size=8,
                    memory_segments=1, fam_length=2)
  _, params = init_params(cfg)
  checkpoint.save_checkpoint(str(tmp_path / "model"), params, cfg)
  prompt = tmp_path / "prompt.txt"
  prompt.write_text("The grass is green. " * 50)
  args = ["--checkpoint", str(tmp_path / "model"), "--prompt-file", str(prompt),
          "--max-new-tokens", "5", "--save-state", str(tmp_path / "stream")]
  assert generate_main(args) == 0
  out = capsys.readouterr()
  assert "prefill: 1000 tokens" in out.err and "tokens/s" in out.err
  assert "100.0%" in out.err  # the progress bar finished
  assert out.out.endswith("\n")
  assert generate_main(["--checkpoint", str(tmp_path / "model"), "--prompt",
                        "more", "--resume-state", str(tmp_path / "stream"),
                        "--max-new-tokens", "2", "--no-progress"]) == 0
  assert "prefill: 4 tokens" in capsys.readouterr().err


def test_cli_random_weights_smoke(capsys):
  assert generate_main(["--random-weights", "--gin", "models/tiny.gin",
                        "--prompt", "hello", "--max-new-tokens", "3",
                        "--attention", "bswa", "--no-progress"]) == 0
  assert "attention=bswa" in capsys.readouterr().err


def test_generation_stops_when_the_kv_cache_is_full():
  cfg = tiny_config(attention="full")
  _, params = init_params(cfg)
  prompt = random_tokens(cfg, 1, 5)
  roomy = generate(params, cfg, streaming.init_state(params, cfg, 1, capacity=64),
                   prompt, max_new_tokens=10)
  small = generate(params, cfg, streaming.init_state(params, cfg, 1, capacity=9),
                   prompt, max_new_tokens=10)
  # 9 - 5 = 4 tokens fit; they are the first four of the unconstrained run.
  assert small.tokens[0] == roomy.tokens[0][:4]
  assert small.full == [True] and roomy.full == [False]
  assert small.stopped == [False]
  assert int(small.state.fill[0]) == 9  # every kept token is in the state


def test_cli_keeps_what_was_generated_when_the_kv_cache_fills(tmp_path, capsys):
  cfg = tiny_config(attention="fam", vocab_size=259, block_size=8,
                    memory_segments=1, fam_length=2)
  _, params = init_params(cfg)
  checkpoint.save_checkpoint(str(tmp_path / "model"), params, cfg)
  args = ["--checkpoint", str(tmp_path / "model"), "--prompt", "hello",
          "--attention", "full", "--no-progress", "--max-new-tokens", "10"]
  assert generate_main(args + ["--capacity", "8"]) == 0
  out = capsys.readouterr()
  assert "stopped after 3 tokens: the KV cache is full (--capacity 8)" in out.err
  assert generate_main(args + ["--capacity", "64"]) == 0
  roomy = capsys.readouterr().out
  tokenizer = ByteTokenizer()
  assert (tokenizer.encode(out.out.rstrip("\n")) ==
          tokenizer.encode(roomy.rstrip("\n"))[:3])


def test_cli_resumes_and_saves_back_into_the_same_directory(tmp_path, capsys):
  cfg = tiny_config(attention="bswa", vocab_size=259, block_size=8,
                    memory_segments=1)
  _, params = init_params(cfg)
  checkpoint.save_checkpoint(str(tmp_path / "model"), params, cfg)
  stream = str(tmp_path / "stream")
  args = ["--checkpoint", str(tmp_path / "model"), "--no-progress",
          "--max-new-tokens", "2", "--save-state", stream]
  assert generate_main(args + ["--prompt", "hello"]) == 0
  assert generate_main(args + ["--prompt", "more", "--resume-state", stream,
                               "--overwrite"]) == 0
  capsys.readouterr()
  state = streaming.load_state(stream, cfg, params=params)
  assert int(state.position[0]) == (5 + 2) + (4 + 2)


@pytest.mark.parametrize("attention", ["full", "fam"])
def test_device_loop_equals_one_decode_step_per_token(attention):
  """Sampled generation, many tokens per dispatch, gives the tokens and the
  state of a Python loop of decode_step calls with the same random keys."""
  cfg = tiny_config(attention=attention, block_size=4, memory_segments=1,
                    fam_length=2)
  _, params = init_params(cfg)
  prompts = random_tokens(cfg, 2, 7)
  lengths = np.array([7, 3])
  sampling = SamplingConfig(temperature=1.0)
  new = lambda: streaming.init_state(params, cfg, 2, capacity=32)
  logits, state = streaming.prefill(params, cfg, new(), prompts, lengths=lengths)
  rng, expected = jax.random.PRNGKey(3), [[], []]
  for _ in range(11):
    rng, step_rng = jax.random.split(rng)
    token = np.asarray(sample(step_rng, logits, sampling))
    for b in range(2):
      expected[b].append(int(token[b]))
    logits, state = streaming.decode_step(params, cfg, state, token)
  for per_dispatch in (1, 4, 16):
    result = generate(params, cfg, new(), prompts, lengths=lengths,
                      max_new_tokens=11, sampling=sampling, seed=3,
                      tokens_per_dispatch=per_dispatch)
    assert result.tokens == expected
    np.testing.assert_array_equal(np.asarray(result.state.position),
                                  np.asarray(state.position))
    np.testing.assert_allclose(np.asarray(result.state.block_k),
                               np.asarray(state.block_k), atol=1e-6)
