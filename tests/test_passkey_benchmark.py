"""benchmarks/passkey.py end to end on a tiny budget: both attentions trained
through both stages, evaluated through the stream, table and plot written.
Accuracy is not asserted (one step cannot learn anything); README.md holds the
real run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fam_jax import checkpoint
from fam_jax.tasks import passkey
from fam_jax.tasks import vocabularies
import train_cli
from util import init_params, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "passkey.py")
LENGTHS = (32, 600)


def test_pipeline_trains_both_stages_evaluates_and_plots(tmp_path):
  out = tmp_path / "passkey"
  # One layer, and both stages on short rows of one shape, so that the second
  # stage reuses the first one's compilation.
  flags = [f"--jax_cache_dir={train_cli.JAX_CACHE}", "--gin.FamConfig.num_layers=1",
           "--gin.STAGE_TASK='fam_passkey_train_copy'", "--gin.STAGE_LENGTH=384",
           "--gin.STAGE_BATCH=2", "--gin.TrainConfig.checkpoint_every=1"]
  result = subprocess.run(
      [sys.executable, SCRIPT, f"--out={out}", "--steps=1,1", "--examples=3",
       "--eval-batch=3", f"--lengths={','.join(map(str, LENGTHS))}",
       *[f"--train-flag={f}" for f in flags]],
      env=train_cli.environment(), capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  for attention in ("fam", "bswa"):
    for stage in ("copy", "memory"):
      config = json.loads(
          (out / attention / stage / "fam_config.json").read_text())["config"]
      assert config["attention"] == attention
      assert (out / attention / stage / "checkpoints" / "1").is_dir()
  summary = json.loads((out / "passkey.json").read_text())
  assert summary["receptive_field"] == (1 * 3 + 1) * 64  # (layers x m + 1) x N
  assert summary["lengths"] == list(LENGTHS) and summary["examples"] == 3
  for attention in ("fam", "bswa"):
    accuracy = summary["accuracy"][attention]
    assert sorted(int(n) for n in accuracy) == list(LENGTHS)
    # 3 examples: each accuracy is a multiple of 100/3 %.
    for value in accuracy.values():
      assert min(abs(value - k * 100 / 3) for k in range(4)) < 1e-6
  table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
  assert table[0] == "| filler tokens | x receptive field | fam | bswa |"
  assert [row.split("|")[1].strip() for row in table[1:]] == ["32", "600"]
  with open(out / "passkey.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_checkpoints_are_evaluated_not_trained(tmp_path, monkeypatch):
  """--checkpoints: the given directories go to the evaluation (stubbed here;
  the test above runs the real one) in the order given, nothing is trained,
  and the receptive field is read from the first one's config."""
  sys.path.insert(0, os.path.dirname(SCRIPT))
  import passkey as script  # pylint: disable=g-import-not-at-top
  cfg = tiny_config(attention="fam", block_size=8, memory_segments=0,
                    fam_length=2)
  _, params = init_params(cfg)
  for name in ("a", "b"):
    checkpoint.save_checkpoint(str(tmp_path / name), params, cfg)
  asked = []
  monkeypatch.setattr(script, "train", lambda *a: pytest.fail("trained"))
  monkeypatch.setattr(script, "evaluate", lambda d, tasks, args, scale: (
      asked.append(d) or {n: float(len(asked)) for n in tasks}))
  out = tmp_path / "out"
  assert script.main([f"--out={out}", "--examples=3", "--lengths=32,64",
                      f"--checkpoints=fam={tmp_path / 'a'},bswa={tmp_path / 'b'}"
                      ]) == 0
  assert asked == [str(tmp_path / "a"), str(tmp_path / "b")]
  summary = json.loads((out / "passkey.json").read_text())
  assert summary["accuracy"] == {"fam": {"32": 1.0, "64": 1.0},
                                 "bswa": {"32": 2.0, "64": 2.0}}
  assert summary["receptive_field"] == 8  # (layers x 0 + 1) x N
  assert summary["steps"] is None
  with pytest.raises(SystemExit):
    script.main([f"--out={out}", f"--checkpoints=fam={tmp_path / 'none'}"])


def test_evaluation_draws_are_not_training_draws():
  """Evaluation (seed 1, split "test") shares no (key, filler) pair with the
  first training rows of either stage (seed 0, split "train")."""
  vocabulary = vocabularies.get_vocabulary()

  def draws(split, filler, seed):
    return {(e["key"], e["filler_tokens"]) for e in passkey.examples(
        split, filler_tokens=filler, seed=seed, num_examples=300,
        vocabulary=vocabulary)}

  train = (draws("train", passkey.NEAR_FILLER_TOKENS, 0)
           | draws("train", passkey.FAR_FILLER_TOKENS, 0))
  evaluation = draws("test", (0, 32), 1) | draws("test", (568, 600), 1)
  assert not train & evaluation
  keys = np.array([int(k) for k, _ in evaluation])
  assert len(set(keys)) > 0.95 * len(evaluation)  # Keys vary, 1..50000.
