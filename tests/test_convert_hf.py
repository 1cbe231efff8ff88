"""fam-convert on Hugging Face checkpoints: converted logits equal transformers'.

Tiny random LlamaForCausalLM / GemmaForCausalLM models are built and saved with
transformers (no download), converted, and run by FamLM; transformers' own
float32 forward pass is the reference.
"""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from fam_jax import FamLM, checkpoint  # noqa: E402
from fam_jax.cli import convert as convert_cli  # noqa: E402
from fam_jax.convert.hf import SafetensorsCheckpoint, convert_hf  # noqa: E402
from fam_jax.convert.mapping import ConversionError  # noqa: E402
from files import write_hf  # noqa: E402
from util import rel_err, run  # noqa: E402

TOL = 1e-4  # issue #5: float32 relative error vs transformers

LLAMA = dict(vocab_size=97, hidden_size=48, intermediate_size=80,
             num_hidden_layers=3, num_attention_heads=6, rms_norm_eps=1e-5)
GEMMA = dict(vocab_size=97, hidden_size=48, intermediate_size=80,
             num_hidden_layers=3, num_attention_heads=4, head_dim=16,
             rms_norm_eps=1e-6)

CASES = {
    # name: (config class, fields, save options)
    "llama-gqa-untied": ("LlamaConfig", dict(LLAMA, num_key_value_heads=2,
                                             rope_theta=500.0), {}),
    "llama-mha-tied-sharded": ("LlamaConfig", dict(
        LLAMA, num_key_value_heads=6, tie_word_embeddings=True),
                               dict(max_shard_size="40KB")),
    "llama-bf16": ("LlamaConfig", dict(LLAMA, num_key_value_heads=3),
                   dict(bf16=True)),
    "gemma-mqa": ("GemmaConfig", dict(GEMMA, num_key_value_heads=1), {}),
    "gemma-gqa": ("GemmaConfig", dict(GEMMA, num_key_value_heads=2), {}),
}


def _save_random_model(case: str, directory: str):
  """Saves a random model of `case`; returns it in float32 for reference."""
  config_class, fields, options = CASES[case]
  config = getattr(transformers, config_class)(**fields)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(
      config, attn_implementation="eager")
  with torch.no_grad():  # norms start at 1 (0 for Gemma): make them matter
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.2 * torch.randn_like(p))
  if options.get("bf16"):
    model = model.to(torch.bfloat16)
  model.save_pretrained(directory, max_shard_size=options.get("max_shard_size",
                                                               "5GB"))
  return model.float().eval()


def _reference_logits(model, tokens):
  with torch.no_grad():
    return model(torch.as_tensor(tokens)).logits.numpy()


@pytest.fixture(scope="module", params=sorted(CASES))
def converted(request, tmp_path_factory):
  directory = str(tmp_path_factory.mktemp(request.param))
  model = _save_random_model(request.param, directory)
  tokens = np.random.default_rng(0).integers(0, 97, (2, 37))
  return request.param, directory, _reference_logits(model, tokens), tokens


def test_full_attention_equals_transformers(converted):
  case, directory, expected, tokens = converted
  params, cfg = convert_hf(directory, attention="full")
  if case == "llama-mha-tied-sharded":
    assert os.path.exists(os.path.join(directory, "model.safetensors.index.json"))
  logits = run(FamLM(cfg), params, tokens)
  assert rel_err(logits, expected) <= TOL, case


def test_bswa_covering_the_input_equals_full_and_fam_runs(converted):
  case, directory, expected, tokens = converted
  params, cfg = convert_hf(directory, attention="bswa", block_size=64,
                           memory_segments=0)
  assert rel_err(run(FamLM(cfg), params, tokens), expected) <= TOL, case
  # Blocks of 8 tokens, one memory segment: a 16-token window; not the same
  # function as full attention on 37 tokens, but exact on the first window.
  params, cfg = convert_hf(directory, attention="bswa", block_size=8,
                           memory_segments=1)
  logits = np.asarray(run(FamLM(cfg), params, tokens))
  assert rel_err(logits[:, :9], expected[:, :9]) <= TOL
  assert rel_err(logits, expected) > TOL
  params, cfg = convert_hf(directory, attention="fam", block_size=8,
                           memory_segments=1, fam_length=4)
  assert params["summarization_embeddings"].shape == (4, cfg.d_model)
  logits = np.asarray(run(FamLM(cfg), params, tokens))
  assert np.all(np.isfinite(logits)) and logits.shape == expected.shape


def test_config_follows_the_checkpoint(converted):
  case, directory, _, _ = converted
  _, cfg = convert_hf(directory, attention="full")
  fields = CASES[case][1]
  assert cfg.num_layers == fields["num_hidden_layers"]
  assert cfg.num_kv_heads == fields["num_key_value_heads"]
  assert cfg.tie_embeddings == fields.get("tie_word_embeddings",
                                          case.startswith("gemma"))
  assert cfg.scale_embeddings == case.startswith("gemma")
  assert cfg.norm_eps == pytest.approx(fields["rms_norm_eps"])
  assert cfg.rope_theta == fields.get("rope_theta", 10_000.0)


def test_summarization_embeddings_initialisations(tmp_path):
  _save_random_model("llama-gqa-untied", str(tmp_path))
  params, _ = convert_hf(str(tmp_path), attention="fam", block_size=8,
                         fam_length=5)
  table = np.asarray(params["token_embedder"]["embedding"])
  bos = json.load(open(os.path.join(tmp_path, "config.json")))["bos_token_id"]
  np.testing.assert_array_equal(params["summarization_embeddings"],
                                np.repeat(table[bos:bos + 1], 5, axis=0))
  params, _ = convert_hf(str(tmp_path), attention="fam", block_size=8,
                         fam_length=5, seed=3, fam_init="vocab")
  rows = np.asarray(params["summarization_embeddings"])
  matches = [np.flatnonzero((table == row).all(axis=1)) for row in rows]
  assert all(len(m) == 1 for m in matches)
  assert len({int(m[0]) for m in matches}) == 5  # distinct tokens
  other, _ = convert_hf(str(tmp_path), attention="fam", block_size=8,
                        fam_length=5, seed=4, fam_init="vocab")
  assert not np.array_equal(other["summarization_embeddings"], rows)
  rand, _ = convert_hf(str(tmp_path), attention="fam", block_size=8,
                       fam_length=5, fam_init="random")
  assert np.std(rand["summarization_embeddings"]) == pytest.approx(
      np.std(table), rel=0.5)
  _edit_config(str(tmp_path), bos_token_id=None)
  with pytest.raises(ConversionError, match="fam_init='bos' needs"):
    convert_hf(str(tmp_path), attention="fam", block_size=8, fam_length=5)


def test_cli_writes_a_checkpoint_generate_can_load(tmp_path, capsys):
  src, out = str(tmp_path / "hf"), str(tmp_path / "fam")
  model = _save_random_model("gemma-gqa", src)
  assert convert_cli.main(["--hf", src, "--out", out, "--attention", "bswa",
                           "--block-size", "64", "--memory-segments", "0",
                           "--param-dtype", "float32"]) == 0
  assert "(3 layers, d_model 48)" in capsys.readouterr().err
  params, cfg = checkpoint.load_checkpoint(out)
  assert cfg.attention == "bswa" and cfg.block_size == 64
  tokens = np.arange(20)[None] % 97
  assert rel_err(run(FamLM(cfg), params, tokens),
                 _reference_logits(model, tokens)) <= TOL
  with open(os.path.join(out, "model.gin")) as f:
    assert "num_kv_heads = 2" in f.read()


def _edit_config(directory, **changes):
  path = os.path.join(directory, "config.json")
  with open(path) as f:
    config = json.load(f)
  config.update(changes)
  with open(path, "w") as f:
    json.dump(config, f)


def _rewrite_tensors(directory, edit):
  """Rewrites model.safetensors with edit(dict of numpy tensors)."""
  from safetensors.numpy import load_file, save_file
  path = os.path.join(directory, "model.safetensors")
  tensors = load_file(path)
  edit(tensors)
  save_file(tensors, path)


def test_bad_checkpoints_name_the_problem(tmp_path):
  src = str(tmp_path)
  _save_random_model("llama-gqa-untied", src)
  with pytest.raises(ConversionError, match="model_type 'qwen2' is not supported"):
    _edit_config(src, model_type="qwen2")
    convert_hf(src, attention="full")
  _edit_config(src, model_type="llama")
  with pytest.raises(ConversionError, match="RoPE scaling of type 'llama3'"):
    _edit_config(src, rope_parameters={"rope_type": "llama3", "factor": 8.0})
    convert_hf(src, attention="full")
  _edit_config(src, rope_parameters={"rope_type": "default", "rope_theta": 500.0})

  def drop(tensors):
    del tensors["model.layers.1.mlp.up_proj.weight"]

  _rewrite_tensors(src, drop)
  with pytest.raises(ConversionError,
                     match=r"'model.layers.1.mlp.up_proj.weight' is missing.*"
                     r"expected shape \(80, 48\)"):
    convert_hf(src, attention="full")

  def reshape(tensors):
    tensors["model.layers.1.mlp.up_proj.weight"] = np.zeros((80, 40), np.float32)
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((24, 48),
                                                                 np.float32)

  _rewrite_tensors(src, reshape)
  with pytest.raises(ConversionError,
                     match=r"'model.layers.0.self_attn.k_proj.weight' has shape "
                     r"\(24, 48\); expected \(16, 48\).*num_key_value_heads=2"):
    convert_hf(src, attention="full")
  with pytest.raises(ConversionError, match="config.json not found"):
    convert_hf(str(tmp_path / "nowhere"), attention="full")
  os.remove(os.path.join(src, "model.safetensors"))
  with pytest.raises(ConversionError, match="neither model.safetensors"):
    convert_hf(src, attention="full")


def test_unreadable_files_are_named(tmp_path):
  src = write_hf(str(tmp_path / "hf"))
  with open(os.path.join(src, "config.json")) as f:
    config = json.load(f)
  del config["hidden_size"]
  with open(os.path.join(src, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(ConversionError, match="config.json has no 'hidden_size'"):
    convert_hf(src, attention="full")
  with open(os.path.join(src, "config.json"), "w") as f:
    f.write("{oops")
  with pytest.raises(ConversionError, match=f"{src}/config.json: not valid JSON"):
    convert_hf(src, attention="full")
  src = write_hf(str(tmp_path / "cut"))
  path = os.path.join(src, "model.safetensors")
  with open(path, "rb") as f:
    data = f.read()
  for size in (len(data) - 1, 100, 4):
    with open(path, "wb") as f:
      f.write(data[:size])
    with pytest.raises(ConversionError, match=f"{path} is truncated"):
      convert_hf(src, attention="full")


def test_unscanned_layers_convert_as_well(tmp_path):
  model = _save_random_model("llama-gqa-untied", str(tmp_path))
  tokens = np.random.default_rng(1).integers(0, 97, (1, 21))
  params, cfg = convert_hf(str(tmp_path), attention="full", scan_layers=False)
  assert sorted(k for k in params if k.startswith("layers")) == [
      "layers_0", "layers_1", "layers_2"]
  assert rel_err(run(FamLM(cfg), params, tokens),
                 _reference_logits(model, tokens)) <= TOL


def test_memory_maps_only_what_it_reads(tmp_path):
  _save_random_model("llama-bf16", str(tmp_path))
  source = SafetensorsCheckpoint(str(tmp_path))
  x = source.read("model.embed_tokens.weight")
  assert isinstance(x, np.memmap) and x.shape == (97, 48)
  assert str(x.dtype) == "bfloat16"
  assert source.shape("no.such.tensor") is None
