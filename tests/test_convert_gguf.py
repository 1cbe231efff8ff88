"""fam-convert on GGUF files, without the 93 MB SmolLM2 package.

A tiny random transformers Llama is written as a llama.cpp GGUF file by hand:
llama.cpp's names, its Q/K row permutation (pairs interleaved per head), float32
and Q8_0 tensors. Converted back, it must give transformers' logits.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf_lib = pytest.importorskip("gguf")

from fam_jax import FamLM  # noqa: E402
from fam_jax.convert.gguf import convert_gguf  # noqa: E402
from fam_jax.convert.mapping import ConversionError  # noqa: E402
from util import rel_err, run  # noqa: E402

LLAMA = dict(vocab_size=96, hidden_size=64, intermediate_size=96,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             rms_norm_eps=1e-5, rope_theta=5000.0, tie_word_embeddings=False,
             bos_token_id=1)


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
  """What llama.cpp's converter does to Q/K rows (written from its definition:
  within each head, row h·E/2 + i moves to row 2i + h)."""
  rows = w.shape[0]
  return (w.reshape(heads, 2, rows // heads // 2, w.shape[1]).swapaxes(1, 2)
          .reshape(w.shape))


def _write_gguf(model, path: str, arch: str = "llama", quantize_ffn=False):
  c = model.config
  writer = gguf_lib.GGUFWriter(path, arch)
  writer.add_block_count(c.num_hidden_layers)
  writer.add_context_length(256)
  writer.add_embedding_length(c.hidden_size)
  writer.add_feed_forward_length(c.intermediate_size)
  writer.add_head_count(c.num_attention_heads)
  writer.add_head_count_kv(c.num_key_value_heads)
  writer.add_rope_freq_base(5000.0)
  writer.add_layer_norm_rms_eps(c.rms_norm_eps)
  writer.add_vocab_size(c.vocab_size)
  writer.add_bos_token_id(1)
  sd = {k: v.detach().numpy().astype(np.float32)
        for k, v in model.state_dict().items()}
  tensors = {"token_embd.weight": sd["model.embed_tokens.weight"],
             "output_norm.weight": sd["model.norm.weight"],
             "output.weight": sd["lm_head.weight"]}
  for i in range(c.num_hidden_layers):
    p = f"model.layers.{i}."
    tensors.update({
        f"blk.{i}.attn_norm.weight": sd[p + "input_layernorm.weight"],
        f"blk.{i}.attn_q.weight": _llama_cpp_permute(
            sd[p + "self_attn.q_proj.weight"], c.num_attention_heads),
        f"blk.{i}.attn_k.weight": _llama_cpp_permute(
            sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads),
        f"blk.{i}.attn_v.weight": sd[p + "self_attn.v_proj.weight"],
        f"blk.{i}.attn_output.weight": sd[p + "self_attn.o_proj.weight"],
        f"blk.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
        f"blk.{i}.ffn_gate.weight": sd[p + "mlp.gate_proj.weight"],
        f"blk.{i}.ffn_up.weight": sd[p + "mlp.up_proj.weight"],
        f"blk.{i}.ffn_down.weight": sd[p + "mlp.down_proj.weight"],
    })
  for name, value in tensors.items():
    if quantize_ffn and "ffn_" in name and value.ndim == 2:
      q8 = gguf_lib.GGMLQuantizationType.Q8_0
      writer.add_tensor(name, gguf_lib.quants.quantize(value, q8), raw_dtype=q8)
    else:
      writer.add_tensor(name, np.ascontiguousarray(value))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return tensors


@pytest.fixture(scope="module")
def llama():
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.2 * torch.randn_like(p))
      if "q_proj" in name or "k_proj" in name:
        p.mul_(6.0)  # peaked attention: RoPE row order then matters
  return model.eval()


def _logits(model, tokens):
  with torch.no_grad():
    return model(torch.as_tensor(tokens)).logits.numpy()


def test_float32_gguf_equals_transformers(llama, tmp_path):
  path = str(tmp_path / "tiny.gguf")
  _write_gguf(llama, path)
  params, cfg = convert_gguf(path, attention="full")
  assert (cfg.num_kv_heads, cfg.rope_theta, cfg.tie_embeddings) == (2, 5000.0,
                                                                    False)
  tokens = np.random.default_rng(0).integers(0, 96, (2, 30))
  assert rel_err(run(FamLM(cfg), params, tokens), _logits(llama, tokens)) <= 1e-4


def test_quantized_tensors_are_dequantized(llama, tmp_path):
  path = str(tmp_path / "q8.gguf")
  tensors = _write_gguf(llama, path, quantize_ffn=True)
  params, cfg = convert_gguf(path, attention="full")
  gate = np.asarray(params["layers"]["mlp"]["gate"]["kernel"][1])  # [D, M]
  exact = tensors["blk.1.ffn_gate.weight"].T
  # Q8_0: 8-bit values with one scale per 32: close, not equal.
  assert 0 < np.max(np.abs(gate - exact)) <= 0.01 * np.max(np.abs(exact))
  tokens = np.random.default_rng(1).integers(0, 96, (1, 20))
  # Q8_0 feed-forward weights: measured 1.9e-3 here; a wrong Q/K row order
  # gives 0.55.
  assert rel_err(run(FamLM(cfg), params, tokens), _logits(llama, tokens)) <= 0.01


def test_unsupported_files_are_named(llama, tmp_path):
  path = str(tmp_path / "gemma.gguf")
  _write_gguf(llama, path, arch="gemma")
  with pytest.raises(ConversionError, match="architecture 'gemma' is not "
                     "supported"):
    convert_gguf(path, attention="full")
  with pytest.raises(ConversionError, match="no such GGUF file"):
    convert_gguf(str(tmp_path / "missing.gguf"))
  (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all" * 10)
  with pytest.raises(ConversionError, match="not a readable GGUF file"):
    convert_gguf(str(tmp_path / "junk.gguf"))
  # Cut anywhere, in the header or the tensor data: "truncated", never a
  # failed reshape.
  data = open(path, "rb").read()
  for size in (3, 100, len(data) // 2, len(data) - 1):
    (tmp_path / "cut.gguf").write_bytes(data[:size])
    with pytest.raises(ConversionError, match="cut.gguf is truncated"):
      convert_gguf(str(tmp_path / "cut.gguf"))
