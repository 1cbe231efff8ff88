"""fam-train end to end: what a run writes, the merged export fam-generate reads,
and one-line errors for bad requests, before anything compiles or is written."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fam_jax import FamLM, checkpoint
from fam_jax.cli.train import main as train_main
from fam_jax.tasks.features import DECODER_BOS
from fam_jax.train import config as train_config
from fam_jax.train import data, observe
import train_cli
from util import rel_err


def test_run_writes_metrics_events_plot_and_an_export(tmp_path):
  model_dir = str(tmp_path / "run")
  hamlet = os.path.join(train_cli.TESTS, "fixtures", "hamlet_opening.txt")
  done = train_cli.run(
      model_dir, "TrainConfig.train_steps = 4", "TrainConfig.eval_every = 2",
      "TrainConfig.eval_tasks = ['test_text_hamlet']", "TrainConfig.eval_batches = 2",
      f"TrainConfig.perplexity_files = ['{hamlet}']",
      "TrainConfig.decode_tasks = ['fam_passkey_1k']",
      "TrainConfig.decode_examples = 3", "TrainConfig.decode_max_new_tokens = 4",
      "TrainConfig.export_merged = True")
  assert done.returncode == 0, done.stderr[-3000:]
  records = observe.read_metrics(model_dir)
  train = [r for r in records if r["split"] == "train"]
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in train] == [1, 2, 3, 4]
  assert [r["step"] for r in evals] == [0, 2, 4]
  for r in evals:
    assert r["test_text_hamlet/perplexity"] == pytest.approx(
        np.exp(r["test_text_hamlet/cross_entropy"]), rel=1e-6)
    assert r["hamlet_opening.txt/perplexity"] > 1
    # Greedy decoding through the streaming path, scored by the task's metric.
    assert r["fam_passkey_1k/examples"] == 3
    assert 0 <= r["fam_passkey_1k/passkey_accuracy"] <= 100
  for split in ("train", "eval"):
    assert any(f.startswith("events.out.tfevents")
               for f in os.listdir(os.path.join(model_dir, split)))
  with open(os.path.join(model_dir, "loss.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(os.path.join(model_dir, "summary.json")) as f:
    assert json.load(f)["step"] == 4
  # The export: LoRA merged into the kernels, the same function as the run's
  # final (adapted) parameters.
  exported, cfg = checkpoint.load_checkpoint(os.path.join(model_dir, "export"))
  trained, run_cfg = checkpoint.load_checkpoint(model_dir)
  assert cfg.lora_rank == 0 and run_cfg.lora_rank == 4
  # Its rows started with the decoder BOS: fam-generate feeds it first.
  for directory in (model_dir, os.path.join(model_dir, "export")):
    assert checkpoint.load_prompt_prefix(directory) == [DECODER_BOS]
  tokens = np.arange(1, 100, dtype=np.int32)[None]
  merged = FamLM(cfg).apply({"params": exported}, tokens)
  adapted = FamLM(run_cfg).apply({"params": trained}, tokens)
  assert rel_err(merged, adapted) < 1e-5
  generated = subprocess.run(
      [sys.executable, "-m", "fam_jax.cli.generate", "--checkpoint",
       os.path.join(model_dir, "export"), "--prompt", "To be, or not to be",
       "--max-new-tokens", "8", "--no-progress"],
      env=train_cli.environment(), capture_output=True, text=True, timeout=600)
  assert generated.returncode == 0, generated.stderr[-2000:]
  assert "generated 8 tokens" in generated.stderr


def test_progress_line_on_stderr(tmp_path):
  done = train_cli.run(str(tmp_path / "run"), "TrainConfig.train_steps = 10",
                       "TrainConfig.checkpoint_every = 10", extra=())
  assert done.returncode == 0, done.stderr[-3000:]
  lines = [l for l in done.stderr.splitlines() if l.startswith("step ")]
  assert lines[-1].startswith("step 10/10 [" + "#" * 30 + "] loss ")
  assert "tokens/s | ETA" in lines[-1]
  assert 5 <= len(lines) <= 11  # one line per 10% when not on a terminal


def _tree_digest(directory):
  digest = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(directory)):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      digest.update(path.encode())
      with open(path, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


@pytest.mark.parametrize("bindings,message", [
    (["TrainConfig.mixture_or_task_name = 'no_such_task'"],
     "fam-train: unknown seqio task or mixture 'no_such_task'"),
    (["TrainConfig.mesh_fsdp = 3"],
     "fam-train: mesh fsdp=3 × tensor=1 does not divide the 1 devices"),
    (["TrainConfig.batch_size = 3", "TrainConfig.grad_accumulation_steps = 2"],
     "fam-train: --gin_file/--gin: TrainConfig.grad_accumulation_steps must be "
     "a divisor of batch_size=3; got 2"),
    (["FamConfig.vocab_size = 100"],
     "fam-train: task 'test_text_hamlet' has a vocabulary of 259 ids but the model "
     "only 100"),
    (["TrainConfig.no_such_field = 1"], "fam-train: --gin_file/--gin: "
     "Configurable 'TrainConfig' doesn't have a parameter named "
     "'no_such_field'."),
    (["FamConfig.block_size = 0"],
     "fam-train: FamConfig.block_size must be a positive integer; got 0"),
])
def test_bad_requests_fail_in_one_line_and_write_nothing(tmp_path, capsys,
                                                         bindings, message):
  # In this process: a child would spend ~10 s importing TensorFlow for each
  # case. The missing-gin test below starts a real fam-train for the
  # process-level half (nothing else printed, exit status 2).
  model_dir = str(tmp_path / "run")
  argv = train_cli.command(model_dir, *bindings)[3:]
  capsys.readouterr()
  assert train_main(argv) == 2
  stderr = capsys.readouterr().err
  assert stderr.strip().splitlines() == [stderr.strip()]
  assert stderr.startswith(message), stderr
  assert not os.path.exists(model_dir)


def test_a_missing_gin_file_is_named(tmp_path):
  done = train_cli.run(str(tmp_path / "run"), extra=("--gin_file=nope.gin",))
  assert done.returncode == 2
  assert done.stderr.startswith(
      "fam-train: --gin_file/--gin: Unable to open file: nope.gin.")
  assert len(done.stderr.strip().splitlines()) == 1


def test_a_run_of_another_model_is_left_alone(tmp_path):
  model_dir = str(tmp_path / "run")
  first = train_cli.run(model_dir, "TrainConfig.train_steps = 1")
  assert first.returncode == 0, first.stderr[-3000:]
  before = _tree_digest(model_dir)
  done = train_cli.run(model_dir, "TrainConfig.train_steps = 2",
                       "FamConfig.d_model = 48")
  assert done.returncode == 2
  assert done.stderr.strip() == (
      f"fam-train: --model_dir {model_dir} holds a run of another model config "
      "(d_model: saved 32, this run 48; head_dim: saved 8, this run 12); use a "
      "new --model_dir")
  assert _tree_digest(model_dir) == before


def test_token_ids_outside_the_vocabulary_are_refused():
  batch = {k: np.zeros((2, 8), np.int32) for k in data.BATCH_FEATURES}
  data.check_batch(batch, 50, "t", 8)
  batch["decoder_target_tokens"][1, 5] = 50
  with pytest.raises(data.DataError, match=r"task 't': token id 50 in "
                     r"decoder_target_tokens \(row 1, position 5\) is outside "
                     r"the model's vocabulary \[0, 50\)"):
    data.check_batch(batch, 50, "t", 8)
  batch["decoder_target_tokens"][1, 5] = -1
  with pytest.raises(data.DataError, match="token id -1"):
    data.check_batch(batch, 50, "t", 8)
  with pytest.raises(data.DataError, match=r"expected \[rows, 16\]"):
    data.check_batch(batch, 50, "t", 16)


@pytest.mark.parametrize("field,value,message", [
    ("finetune", "qlora", "TrainConfig.finetune must be one of"),
    ("batch_size", 0, "TrainConfig.batch_size must be a positive integer"),
    ("state_passing_probability", 1.5,
     r"TrainConfig.state_passing_probability must be a probability in \[0, 1\]"),
    ("mesh_data", 0, "TrainConfig.mesh_data must be a positive integer or -1"),
    ("eval_every", -1, "TrainConfig.eval_every must be an integer >= 0"),
])
def test_train_config_errors_name_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    train_config.TrainConfig(**{field: value})


def test_gin_flags_are_split_from_the_others():
  from fam_jax.cli.train import split_gin_flags
  rest, bindings = split_gin_flags(
      ["--model_dir=x", "--gin.TrainConfig.batch_size=4",
       "--gin_file=a.gin", "--gin.MODEL_DIR='y'"])
  assert rest == ["--model_dir=x", "--gin_file=a.gin"]
  assert bindings == ["TrainConfig.batch_size=4", "MODEL_DIR='y'"]
