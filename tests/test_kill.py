"""A process killed (SIGKILL) or interrupted (Ctrl-C) while it writes a checkpoint,
a converted model or a stream state leaves the old content intact or the new
content complete, and a rerun succeeds.

The child processes stop themselves at the named steps of `atomic.kill_point`
(FAM_JAX_KILL_AT), so every step is hit exactly, without timing luck.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from fam_jax import atomic, checkpoint, streaming
from fam_jax.cli import convert as convert_cli
from fam_jax.text.bpe import BpeTokenizer
from fam_jax.text.loading import load_tokenizer
from files import write_gguf
from util import init_params, tiny_config

TESTS = os.path.dirname(os.path.abspath(__file__))
CFG = dict(attention="fam", block_size=4, fam_length=2)


def _child(args, kill_at=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
  env.pop(atomic.KILL_ENV, None)
  if kill_at:
    env[atomic.KILL_ENV] = kill_at
  # Ctrl-C as in a terminal: a pytest-xdist worker ignores SIGINT, and an
  # ignored signal would stay ignored in the child (exec keeps SIG_IGN).
  ignored = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=300, env=env)
  finally:
    signal.signal(signal.SIGINT, ignored)


def _assert_same(a, b):
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


_SAVE_CHECKPOINT = textwrap.dedent("""
    import sys
    from fam_jax import checkpoint
    from util import init_params, tiny_config
    cfg = tiny_config(attention="fam", block_size=4, fam_length=2)
    _, params = init_params(cfg, seed=2)
    checkpoint.save_checkpoint(sys.argv[1], params, cfg, overwrite=True)
""")


@pytest.mark.parametrize("point,survivor", [
    ("config-written", "old"), ("params-written", "old"),
    ("before-commit", "old"), ("after-exchange", "new")])
def test_checkpoint_killed_while_saving(tmp_path, point, survivor):
  cfg = tiny_config(**CFG)
  _, old = init_params(cfg, seed=1)
  _, new = init_params(cfg, seed=2)
  dest = str(tmp_path / "ckpt")
  checkpoint.save_checkpoint(dest, old, cfg)
  result = _child(["-c", _SAVE_CHECKPOINT, dest], kill_at=point)
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  _assert_same(checkpoint.load_checkpoint(dest)[0],
               old if survivor == "old" else new)
  checkpoint.save_checkpoint(dest, new, cfg, overwrite=True)  # the rerun
  _assert_same(checkpoint.load_checkpoint(dest)[0], new)
  assert os.listdir(tmp_path) == ["ckpt"]  # the killed write's leftovers are gone


def test_first_checkpoint_killed_before_commit_leaves_nothing(tmp_path):
  dest = str(tmp_path / "ckpt")
  result = _child(["-c", _SAVE_CHECKPOINT, dest], kill_at="params-written")
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  assert not os.path.exists(dest)
  assert _child(["-c", _SAVE_CHECKPOINT, dest]).returncode == 0
  assert checkpoint.load_config(dest) == tiny_config(**CFG)


_SAVE_STATE = textwrap.dedent("""
    import sys
    from fam_jax import streaming
    from util import init_params, tiny_config
    cfg = tiny_config(attention="bswa", block_size=4)
    _, params = init_params(cfg)
    state = streaming.init_state(params, cfg, 1, start_position=int(sys.argv[2]))
    streaming.save_state(sys.argv[1], state, cfg, params=params, overwrite=True)
""")


@pytest.mark.parametrize("point,survivor", [
    ("state-meta-written", 100), ("state-arrays-written", 100),
    ("before-commit", 100), ("after-exchange", 200)])
def test_stream_state_killed_while_saving(tmp_path, point, survivor):
  cfg = tiny_config(attention="bswa", block_size=4)
  _, params = init_params(cfg)
  dest = str(tmp_path / "stream")

  def save(position):
    state = streaming.init_state(params, cfg, 1, start_position=position)
    streaming.save_state(dest, state, cfg, params=params, overwrite=True)

  save(100)
  result = _child(["-c", _SAVE_STATE, dest, "200"], kill_at=point)
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  state = streaming.load_state(dest, cfg, params=params)
  assert int(state.position[0]) == survivor
  save(300)  # the rerun
  assert int(streaming.load_state(dest, cfg, params=params).position[0]) == 300
  assert os.listdir(tmp_path) == ["stream"]


def _assert_complete_conversion(directory, attention):
  """Config, weights, gin file and tokenizer files all of one conversion."""
  params, cfg = checkpoint.load_checkpoint(directory)
  assert cfg.attention == attention
  assert ("summarization_embeddings" in params) == (attention == "fam")
  with open(os.path.join(directory, "model.gin")) as f:
    assert f"attention = '{attention}'" in f.read()
  for path in glob.glob(os.path.join(directory, "*.json")):
    with open(path) as f:
      json.load(f)  # none cut short
  with open(os.path.join(directory, "tokenizer.json")) as f:
    named = json.load(f).get("file")
  assert named is None or os.path.exists(os.path.join(directory, named))
  # tokenizer.json and tokenizer_config.json of the same save: they load as one.
  tokenizer = load_tokenizer(directory)
  assert isinstance(tokenizer, BpeTokenizer)
  assert tokenizer.vocab_size <= cfg.vocab_size
  assert tokenizer.decode_bytes(tokenizer.encode("hi there")) == b"hi there"


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
  return write_gguf(str(tmp_path_factory.mktemp("gguf") / "tiny.gguf"))


def _convert_args(gguf_file, out, attention):
  return ["--gguf", gguf_file, "--out", out, "--attention", attention,
          "--block-size", "8", "--fam-length", "2", "--overwrite"]


@pytest.mark.parametrize("point,survivor", [
    ("config-written", "bswa"), ("params-written", "bswa"),
    ("gin-written", "bswa"), ("before-commit", "bswa"),
    ("after-exchange", "fam")])
def test_fam_convert_killed_while_writing(tmp_path, gguf_file, point, survivor,
                                          capsys):
  out = str(tmp_path / "model")
  assert convert_cli.main(_convert_args(gguf_file, out, "bswa")) == 0
  result = _child(["-m", "fam_jax.cli.convert",
                   *_convert_args(gguf_file, out, "fam")], kill_at=point)
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  _assert_complete_conversion(out, survivor)
  assert convert_cli.main(_convert_args(gguf_file, out, "fam")) == 0  # rerun
  _assert_complete_conversion(out, "fam")
  assert os.listdir(tmp_path) == ["model"]
  capsys.readouterr()


def test_fam_convert_ctrl_c_keeps_the_old_model_and_prints_one_line(
    tmp_path, gguf_file):
  out = str(tmp_path / "model")
  assert convert_cli.main(_convert_args(gguf_file, out, "bswa")) == 0
  result = _child(["-m", "fam_jax.cli.convert",
                   *_convert_args(gguf_file, out, "fam")],
                  kill_at="params-written:INT")
  assert result.returncode == 130
  assert result.stderr == f"fam-convert: interrupted; {out} was left as it was\n"
  _assert_complete_conversion(out, "bswa")
  assert os.listdir(tmp_path) == ["model"]
