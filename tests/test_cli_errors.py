"""Bad input to fam-generate and fam-convert: one line `prog: <what is wrong>` on
stderr naming the file, field or flag, exit status 2, no traceback (docs/errors.md
lists the same cases)."""

import io
import json
import os
import shutil
import sys

import pytest

from fam_jax import checkpoint, streaming
from fam_jax.cli import convert as convert_cli
from fam_jax.cli import errors
from fam_jax.cli import generate as generate_cli
from fam_jax.convert import gguf
from files import write_gguf, write_hf
from util import init_params, tiny_config


def _damage(directory):
  """Cuts every file of an orbax directory's data and manifests to 10 bytes."""
  for root, _, names in os.walk(directory):
    for name in names:
      if "ocdbt" in name or os.path.basename(root) == "d":
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(10)


@pytest.fixture(scope="module")
def d(tmp_path_factory):
  """A directory of good and bad files; `{d}` in the cases below."""
  root = tmp_path_factory.mktemp("bad_inputs")
  w = str(root)
  cfg = tiny_config(attention="fam", vocab_size=259, block_size=8,
                    memory_segments=1, fam_length=2)
  _, params = init_params(cfg)
  checkpoint.save_checkpoint(f"{w}/ckpt", params, cfg)
  _, other = init_params(cfg, seed=5)
  checkpoint.save_checkpoint(f"{w}/other_weights", other, cfg)
  bswa = cfg.replace(attention="bswa")
  checkpoint.save_checkpoint(f"{w}/bswa_ckpt", init_params(bswa)[1], bswa)
  streaming.save_state(f"{w}/state", streaming.init_state(params, cfg, 1), cfg,
                       params=params)
  shutil.copytree(f"{w}/ckpt", f"{w}/no_params")
  shutil.rmtree(f"{w}/no_params/params")
  shutil.copytree(f"{w}/ckpt", f"{w}/damaged_params")
  _damage(f"{w}/damaged_params/params")
  shutil.copytree(f"{w}/ckpt", f"{w}/bad_json")
  with open(f"{w}/bad_json/fam_config.json", "w") as f:
    f.write("{oops")
  shutil.copytree(f"{w}/state", f"{w}/state_no_arrays")
  shutil.rmtree(f"{w}/state_no_arrays/state")
  shutil.copytree(f"{w}/state", f"{w}/damaged_state")
  _damage(f"{w}/damaged_state/state")
  write_gguf(f"{w}/tiny.gguf")
  source = gguf.GgufCheckpoint(f"{w}/tiny.gguf")
  converted, converted_cfg = gguf.convert_source(source, attention="bswa",
                                                 block_size=8)
  checkpoint.save_checkpoint(f"{w}/cut_tokenizer", converted, converted_cfg)
  source.tokenizer().save(f"{w}/cut_tokenizer")
  shutil.copytree(f"{w}/cut_tokenizer", f"{w}/bad_tokenizer_config")
  with open(f"{w}/cut_tokenizer/tokenizer.json", "r+b") as f:
    f.truncate(os.path.getsize(f"{w}/cut_tokenizer/tokenizer.json") // 2)
  with open(f"{w}/bad_tokenizer_config/tokenizer_config.json", "w") as f:
    f.write("{oops")
  with open(f"{w}/tiny.gguf", "rb") as f:
    data = f.read()
  with open(f"{w}/truncated.gguf", "wb") as f:
    f.write(data[:len(data) * 2 // 3])
  with open(f"{w}/junk.gguf", "wb") as f:
    f.write(b"not a gguf file at all" * 10)
  write_hf(f"{w}/hf")
  for name in ("hf_bad_json", "hf_no_hidden_size", "hf_truncated",
               "hf_bad_index"):
    shutil.copytree(f"{w}/hf", f"{w}/{name}")
  with open(f"{w}/hf_bad_json/config.json", "w") as f:
    f.write("{oops")
  with open(f"{w}/hf/config.json") as f:
    config = json.load(f)
  del config["hidden_size"]
  with open(f"{w}/hf_no_hidden_size/config.json", "w") as f:
    json.dump(config, f)
  with open(f"{w}/hf/model.safetensors", "rb") as f:
    data = f.read()
  with open(f"{w}/hf_truncated/model.safetensors", "wb") as f:
    f.write(data[:len(data) // 2])
  with open(f"{w}/hf_bad_index/model.safetensors.index.json", "w") as f:
    f.write("[1,")
  with open(f"{w}/bad.gin", "w") as f:
    f.write("config.FamConfig.num_layers = = 2\n")
  with open(f"{w}/latin1.txt", "wb") as f:
    f.write("café".encode("latin-1"))
  return w


CKPT = ["--checkpoint", "{d}/ckpt", "--no-progress", "--prompt", "hi"]
GENERATE_CASES = {
    "missing checkpoint": (
        ["--checkpoint", "{d}/nothing", "--prompt", "hi"],
        "{d}/nothing/fam_config.json not found: {d}/nothing is not a fam-jax "
        "checkpoint"),
    "checkpoint without params": (
        ["--checkpoint", "{d}/no_params", "--prompt", "hi"],
        "{d}/no_params/params not found"),
    "damaged checkpoint params": (
        ["--checkpoint", "{d}/damaged_params", "--prompt", "hi"],
        "{d}/damaged_params/params: cannot read the parameters"),
    "invalid fam_config.json": (
        ["--checkpoint", "{d}/bad_json", "--prompt", "hi"],
        "{d}/bad_json/fam_config.json: not valid JSON"),
    "damaged tokenizer.json of a converted model": (
        ["--checkpoint", "{d}/cut_tokenizer", "--prompt", "hi"],
        "{d}/cut_tokenizer/tokenizer.json: not a readable tokenizers file"),
    "invalid tokenizer_config.json of a converted model": (
        ["--checkpoint", "{d}/bad_tokenizer_config", "--prompt", "hi"],
        "{d}/bad_tokenizer_config/tokenizer_config.json: not valid JSON"),
    "a file that is not GGUF": (
        ["--gguf", "{d}/junk.gguf", "--prompt", "hi"],
        "{d}/junk.gguf: not a readable GGUF file (GGUF magic invalid)"),
    "truncated GGUF": (
        ["--gguf", "{d}/truncated.gguf", "--prompt", "hi"],
        "{d}/truncated.gguf is truncated"),
    "missing GGUF": (
        ["--gguf", "{d}/missing.gguf", "--prompt", "hi"],
        "{d}/missing.gguf: no such GGUF file"),
    "missing gin file": (
        ["--random-weights", "--gin", "nosuch.gin", "--prompt", "hi"],
        "--gin/--gin-binding: Unable to open file: nosuch.gin"),
    "gin syntax error": (
        ["--random-weights", "--gin", "{d}/bad.gin", "--prompt", "hi"],
        "(bad.gin, line 1)"),
    "gin binding of an unknown field": (
        ["--random-weights", "--gin", "models/tiny.gin", "--gin-binding",
         "config.FamConfig.num_layerz = 2", "--prompt", "hi"],
        "doesn't have a parameter named 'num_layerz'"),
    "gin value out of range": (
        ["--random-weights", "--gin", "models/tiny.gin", "--gin-binding",
         "config.FamConfig.block_size = 0", "--prompt", "hi"],
        "FamConfig.block_size must be a positive integer; got 0"),
    "--random-weights without --gin": (
        ["--random-weights", "--prompt", "hi"],
        "--gin/--gin-binding: FamConfig.__init__() missing 5 required"),
    "--top-p out of range": (
        CKPT + ["--top-p", "1.5"], "SamplingConfig.top_p must be in (0, 1]"),
    "negative --temperature": (
        CKPT + ["--temperature", "-1"], "temperature must be >= 0; got -1.0"),
    "negative --top-k": (
        CKPT + ["--top-k", "-3"], "top_k must be >= 0; got -3"),
    "negative --max-new-tokens": (
        CKPT + ["--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
    "--capacity 0": (CKPT + ["--capacity", "0"], "--capacity must be >= 1"),
    "--attention fam on a checkpoint without FAM weights": (
        ["--checkpoint", "{d}/bswa_ckpt", "--prompt", "hi", "--attention",
         "fam"],
        "--checkpoint {d}/bswa_ckpt: the params have no "
        "summarization_embeddings, so they cannot run with attention='fam'"),
    "--block-size 0": (
        CKPT + ["--block-size", "0"],
        "FamConfig.block_size must be a positive integer"),
    "--chat without a chat template": (
        CKPT + ["--chat"], "--chat needs a tokenizer with a chat template"),
    "prompt file not UTF-8": (
        ["--checkpoint", "{d}/ckpt", "--prompt-file", "{d}/latin1.txt"],
        "{d}/latin1.txt: the prompt is not UTF-8 text (byte 0xe9 at offset 3)"),
    "stdin not UTF-8": (
        ["--checkpoint", "{d}/ckpt", "--prompt-file", "-"],
        "stdin: the prompt is not UTF-8 text (byte 0xe9 at offset 3)"),
    "missing prompt file": (
        ["--checkpoint", "{d}/ckpt", "--prompt-file", "{d}/none.txt"],
        "[Errno 2] No such file or directory: '{d}/none.txt'"),
    "empty prompt": (
        ["--checkpoint", "{d}/ckpt", "--prompt", ""], "the prompt is empty"),
    "missing resume state": (
        CKPT + ["--resume-state", "{d}/nothing"],
        "{d}/nothing/stream.json not found: not a saved StreamState"),
    "resume state without arrays": (
        CKPT + ["--resume-state", "{d}/state_no_arrays"],
        "{d}/state_no_arrays/state not found"),
    "damaged resume state": (
        CKPT + ["--resume-state", "{d}/damaged_state"],
        "{d}/damaged_state/state: cannot read the saved stream's arrays: the "
        "files are damaged or incomplete"),
    "resume state of other weights": (
        ["--checkpoint", "{d}/other_weights", "--prompt", "hi",
         "--resume-state", "{d}/state"],
        "{d}/state/stream.json: the stream was saved with other weights"),
    "resume state of another config": (
        CKPT + ["--resume-state", "{d}/state", "--memory-segments", "2"],
        "another model config (memory_segments: saved 1, model 2)"),
    "--save-state onto a saved state": (
        CKPT + ["--save-state", "{d}/state"],
        "--save-state: {d}/state already holds a saved stream state; replace "
        "it with --overwrite"),
    "--save-state onto a checkpoint, with --overwrite": (
        CKPT + ["--save-state", "{d}/ckpt", "--overwrite"],
        "{d}/ckpt exists and is not a saved stream state (no stream.json)"),
    "--capacity that does not fit in memory": (
        CKPT + ["--attention", "full", "--capacity", "1000000000"],
        "--capacity 1000000000 (attention='full') needs about"),
    "--capacity too large, checked before the weights are read": (
        ["--checkpoint", "{d}/no_params", "--prompt", "hi", "--attention",
         "full", "--capacity", "1000000000"], "lower --capacity"),
    "prompt longer than --capacity": (
        CKPT[:-1] + ["hello there", "--attention", "full", "--capacity", "4"],
        "the prompt (11 tokens) does not fit in --capacity 4"),
}
STDIN = {"stdin not UTF-8": "café".encode("latin-1")}

CONVERT_CASES = {
    "missing Hugging Face directory": (
        ["--hf", "{d}/nothing", "--out", "{d}/out"],
        "{d}/nothing/config.json not found"),
    "invalid config.json": (
        ["--hf", "{d}/hf_bad_json", "--out", "{d}/out"],
        "{d}/hf_bad_json/config.json: not valid JSON"),
    "config.json without hidden_size": (
        ["--hf", "{d}/hf_no_hidden_size", "--out", "{d}/out"],
        "--hf {d}/hf_no_hidden_size: config.json has no 'hidden_size'"),
    "truncated safetensors": (
        ["--hf", "{d}/hf_truncated", "--out", "{d}/out"],
        "{d}/hf_truncated/model.safetensors is truncated"),
    "invalid safetensors index": (
        ["--hf", "{d}/hf_bad_index", "--out", "{d}/out"],
        "{d}/hf_bad_index/model.safetensors.index.json: not valid JSON"),
    "truncated GGUF": (
        ["--gguf", "{d}/truncated.gguf", "--out", "{d}/out"],
        "{d}/truncated.gguf is truncated"),
    "a file that is not GGUF": (
        ["--gguf", "{d}/junk.gguf", "--out", "{d}/out"],
        "not a readable GGUF file"),
    "--out holds a checkpoint, checked before converting": (
        ["--hf", "{d}/nothing", "--out", "{d}/ckpt"],
        "--out: {d}/ckpt already holds a fam-jax checkpoint; replace it with "
        "--overwrite"),
    "--out is another directory, with --overwrite": (
        ["--hf", "{d}/hf", "--out", "{d}/hf_bad_json", "--overwrite"],
        "{d}/hf_bad_json exists and is not a fam-jax checkpoint"),
    "--fam-length > --block-size": (
        ["--gguf", "{d}/tiny.gguf", "--out", "{d}/out", "--block-size", "8",
         "--fam-length", "64"], "FamConfig.fam_length must be at most "
        "block_size=8"),
}


def _check_one_line(prog, status, err, expected):
  assert status == errors.USAGE_ERROR, err
  assert "Traceback" not in err
  assert err.count("\n") == 1 and err.startswith(f"{prog}: "), err
  assert expected in err, err


# After a failed read of a damaged checkpoint, tensorstore callbacks reach
# orbax's closed event loop; a CLI exits first, pytest's process lives on and
# reports them as unraisable exceptions.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("case", GENERATE_CASES)
def test_fam_generate_user_errors(d, case, capsys, monkeypatch):
  args, expected = GENERATE_CASES[case]
  if case in STDIN:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(STDIN[case])))
  status = generate_cli.main([a.format(d=d) for a in args])
  out = capsys.readouterr()
  _check_one_line("fam-generate", status, out.err, expected.format(d=d))
  assert out.out == ""  # refused before generating anything


@pytest.mark.parametrize("case", CONVERT_CASES)
def test_fam_convert_user_errors(d, case, capsys):
  args, expected = CONVERT_CASES[case]
  status = convert_cli.main([a.format(d=d) for a in args])
  _check_one_line("fam-convert", status, capsys.readouterr().err,
                  expected.format(d=d))
  assert not os.path.exists(f"{d}/out")


def test_debug_shows_the_traceback(d, capsys):
  status = generate_cli.main(["--checkpoint", f"{d}/nothing", "--prompt", "hi",
                              "--debug"])
  err = capsys.readouterr().err
  assert status == errors.USAGE_ERROR
  assert err.startswith("Traceback") and "FileNotFoundError" in err
  assert err.endswith(f"fam-generate: {d}/nothing/fam_config.json not found: "
                      f"{d}/nothing is not a fam-jax checkpoint\n")


def test_run_main_keeps_tracebacks_of_bugs_and_reports_ctrl_c(capsys):
  def bug(argv):
    raise KeyError("internal")

  with pytest.raises(KeyError, match="internal"):
    errors.run_main("fam-x", bug, [])

  def interrupted(argv):
    error = KeyboardInterrupt()
    error.add_note("out/ was left as it was")
    raise error

  assert errors.run_main("fam-x", interrupted, []) == errors.INTERRUPTED
  assert capsys.readouterr().err == ("fam-x: interrupted; out/ was left as it "
                                     "was\n")


def test_user_errors_converts_only_the_named_types():
  with pytest.raises(errors.UserError, match=r"^--gin x\.gin: bad value$"):
    with errors.user_errors(ValueError, context="--gin x.gin"):
      raise ValueError("bad value\nand 150 lines of detail")
  with pytest.raises(errors.UserError, match=r"^x\.gin, line 3: bad value$"):
    with errors.user_errors(ValueError, context="--gin x.gin"):
      raise ValueError("x.gin, line 3: bad value")
  with pytest.raises(TypeError):
    with errors.user_errors(ValueError, context="--gin x.gin"):
      raise TypeError("a bug")
  with pytest.raises(errors.UserError) as error:
    with errors.user_errors(ValueError):
      raise ValueError("x" * 2000)
  assert len(str(error.value)) == errors.MAX_MESSAGE
