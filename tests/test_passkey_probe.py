"""benchmarks/passkey_probe.py: its numpy rows are the seqio tasks' rows (same
prompt, byte ids, weights), and its exact match counts an example right only
when every answer token is."""

import json
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from fam_jax.config import FamConfig
from fam_jax.tasks import features, passkey

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import passkey_probe  # noqa: E402  pylint: disable=g-import-not-at-top

VOCAB = seqio.ByteVocabulary()


def test_passkey_rows_match_the_task():
  rows = passkey_probe.Rows(seed=3)
  batch = rows.batch("near", 6, 384)
  targets = batch["decoder_target_tokens"]
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:],
                                targets[:, :-1])
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 0],
                                features.DECODER_BOS)
  for row, weights in zip(targets, batch["decoder_loss_weights"]):
    used = int(np.sum(row != 0))
    assert row[used - 1] == VOCAB.eos_id
    text = VOCAB.decode(row[:used - 1].tolist())
    prompt, answer = text.rsplit(" ", 1)
    key = int(answer)
    filler = prompt.split("\n")[2]
    assert prompt == passkey.prompt(key, filler)
    assert 0 <= len(VOCAB.encode(filler)) <= 64
    answer_tokens = len(f" {key}") + 1  # and EOS
    np.testing.assert_allclose(weights[:used - answer_tokens], 0.1)
    np.testing.assert_array_equal(weights[used - answer_tokens:used], 1)
    assert not weights[used:].any()


def test_copy_drill_rows():
  batch = passkey_probe.Rows(seed=0).batch("induct", 4, 384)
  for row in batch["decoder_target_tokens"]:
    used = int(np.sum(row != 0))
    first, second = VOCAB.decode(row[:used - 1].tolist()).split("\n")
    assert first == second and 40 <= len(first) <= 180


def test_recall_rows_ask_for_the_same_key_again_and_again():
  """A recall row: the PassKey prompt, then question and answer again after
  each filler of the stage's range; weight 1 on exactly the answers."""
  text = passkey_probe.passkey_text()
  batch = passkey_probe.Rows(seed=2).batch("recall0-64", 4, 768)
  for row, weights in zip(batch["decoder_target_tokens"],
                          batch["decoder_loss_weights"]):
    used = int(np.sum(row != 0))
    assert row[used - 1] == VOCAB.eos_id and weights[used - 1] == 0.1
    ids = row[:used - 1]
    text_row = VOCAB.decode(ids.tolist())
    key = text_row.split("\n")[1].split()[4].rstrip(".")
    assert text_row.startswith(passkey.prompt(int(key), "").rsplit("\n", 2)[0])
    questions = text_row.split(text["QUESTION"])
    assert len(questions) >= 4  # 768 tokens hold several
    for after in questions[1:]:
      assert after.split("\n")[0] == f" {key}"
    for filler in (q.split("\n", 1)[1] for q in questions[1:-1]):
      assert len(VOCAB.encode(filler.rstrip("\n"))) <= 64
    answers = [VOCAB.decode(ids[run].tolist()) for run in np.split(
        np.flatnonzero(weights[:used - 1] == 1),
        np.flatnonzero(np.diff(np.flatnonzero(weights[:used - 1] == 1)) > 1)
        + 1)]
    assert answers == [f" {key}"] * (len(questions) - 1)
    np.testing.assert_allclose(weights[:used - 1][weights[:used - 1] != 1], 0.1)


def test_exact_match_needs_every_answer_token():
  cfg = FamConfig(vocab_size=259, num_layers=1, d_model=16, num_heads=2,
                  mlp_dim=32, block_size=64, memory_segments=1, fam_length=4)
  tokens, segments, targets, answer = passkey_probe.eval_rows(cfg, 128, 5, 0)
  assert tokens.shape[1] % 64 == 0
  np.testing.assert_array_equal(tokens[:, 1:][segments[:, 1:] > 0],
                                targets[:, :-1][segments[:, 1:] > 0])
  for row, mask in zip(targets, answer):
    key = VOCAB.decode(row[mask].tolist())
    assert key.startswith(" ") and key[1:].isdigit()
  predicted = targets.copy()
  predicted[~answer] = 5  # wrong outside the answers: does not count
  predicted[1, np.flatnonzero(answer[1])[-1]] = 7  # one wrong answer digit
  predicted[3, np.flatnonzero(answer[3])[0]] = 7
  logits = jnp.asarray(np.eye(cfg.vocab_size, dtype=np.float32)[predicted])
  assert passkey_probe.exact_match(logits, targets, answer) == 60.0


def test_init_evaluates_the_saved_parameters(tmp_path):
  """--init with no stages scores the npz a run wrote exactly as that run's
  final evaluation did (same parameters, same evaluation rows)."""
  common = ["--attention", "fam", "--lengths", "0,32", "--eval-examples", "8"]
  passkey_probe.main(["--out", str(tmp_path / "a"), "--stages", "near:2:384:2",
                      "--model", "num_layers=1,d_model=32,mlp_dim=64,"
                      "block_size=32,fam_length=4", "--watch", "0",
                      "--eval-every", "100", *common])
  passkey_probe.main(["--out", str(tmp_path / "b"), "--stages", "", "--init",
                      str(tmp_path / "a" / "fam.npz"), "--no-params", *common])
  final = lambda d: json.load(open(tmp_path / d / "probe.json"))["log"][-1]
  assert final("a") == final("b")
  assert set(final("b")["final"]) == {"0", "32"}
  # A BSWA twin starts from the FAM run's weights, less its summarization
  # embeddings.
  common[1] = "bswa"
  passkey_probe.main(["--out", str(tmp_path / "c"), "--stages", "", "--init",
                      str(tmp_path / "a" / "fam.npz"), *common])
  with np.load(tmp_path / "c" / "bswa.npz") as twin, \
      np.load(tmp_path / "a" / "fam.npz") as fam:
    assert set(fam.files) - set(twin.files) == {"summarization_embeddings"}
    for name in set(twin.files) - {"__config__"}:
      np.testing.assert_array_equal(twin[name], fam[name])


def test_init_may_change_only_the_windows(tmp_path):
  """--init with --model: N and m hold no parameters (a curriculum may train
  with m=0, only the FAM reaching past the block); anything else is refused
  before any work."""
  with pytest.raises(SystemExit):
    passkey_probe.main(["--out", str(tmp_path), "--stages", "", "--init",
                        str(tmp_path / "none.npz"), "--attention", "fam",
                        "--model", "memory_segments=0,fam_length=16"])
