"""The trained PassKey models of benchmarks/passkey_models (README, PassKey):
through the stream, the FAM model answers a key ~1,100 tokens back, 2.5x past
BSWA's receptive field, and its BSWA twin cannot. The FAM model is sensitive
to every mask bit and every FAM update of the streaming path it was not
trained on (it was trained on the training path), so this guards them with
a model whose memory is known to work."""

import os
import sys

import numpy as np
import pytest

from fam_jax import checkpoint, streaming
from fam_jax.cli.generate import main as generate_main
from fam_jax.generate import generate

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
sys.path.insert(0, BENCHMARKS)
import passkey_probe  # noqa: E402  pylint: disable=g-import-not-at-top

def passkey_prompts(count: int, filler: int, seed: int):
  """(ids [count, T] with the decoder BOS first, lengths, answers as text)."""
  rows = passkey_probe.Rows(seed)
  pairs = [rows.passkey(filler - 32, filler) for _ in range(count)]
  ids = [np.concatenate([[passkey_probe.DECODER_BOS], np.frombuffer(p, np.uint8)
                         .astype(np.int32) + passkey_probe.BYTE_OFFSET])
         for p, _ in pairs]
  lengths = np.array([len(i) for i in ids])
  tokens = np.zeros((count, lengths.max()), np.int32)
  for row, i in zip(tokens, ids):
    row[:len(i)] = i
  return tokens, lengths, [a.decode() for _, a in pairs]


def greedy_answers(attention: str, tokens, lengths) -> list[str]:
  params, cfg = passkey_probe.load_npz(
      os.path.join(BENCHMARKS, "passkey_models", f"{attention}.npz"))
  assert cfg.attention == attention
  state = streaming.init_state(params, cfg, len(tokens))
  out = generate(params, cfg, state, tokens, lengths=lengths, max_new_tokens=6)
  return [bytes(t - passkey_probe.BYTE_OFFSET for t in row).decode("utf-8",
                                                                   "replace")
          for row in out.tokens]


@pytest.mark.parametrize("attention,least_right,most_right",
                         [("fam", 5, 6), ("bswa", 0, 0)])
def test_the_fam_model_carries_the_key_past_bswas_reach(
    attention, least_right, most_right):
  # Fillers of 992-1,024 tokens: the key sits ~1,100 tokens before the
  # answer; BSWA's receptive field is (2 layers x m 3 + 1) x N 64 = 448.
  tokens, lengths, answers = passkey_prompts(6, 1024, seed=11)
  got = greedy_answers(attention, tokens, lengths)
  right = sum(g.split()[:1] == [a.strip()] for g, a in zip(got, answers))
  assert least_right <= right <= most_right, (got, answers)


def test_fam_generate_feeds_what_training_started_rows_with(tmp_path, capsys):
  """The exported model records the decoder BOS its rows started with, and
  fam-generate feeds it before the prompt: without it every position is one
  off from training and this model drops the key's first digit."""
  export = str(tmp_path / "fam")
  passkey_probe.export(os.path.join(BENCHMARKS, "passkey_models", "fam.npz"),
                       export)
  assert checkpoint.load_prompt_prefix(export) == [passkey_probe.DECODER_BOS]
  rows = passkey_probe.Rows(seed=5)
  prompt, answer = rows.passkey(480, 512)
  capsys.readouterr()
  assert generate_main(["--checkpoint", export, "--prompt", prompt.decode(),
                        "--max-new-tokens", "6", "--no-progress"]) == 0
  assert capsys.readouterr().out.split()[:1] == [answer.decode().strip()]
