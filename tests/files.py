"""Tiny pretrained-model files written from NumPy, without torch or transformers:
a Hugging Face Llama directory (config.json + model.safetensors) and a llama.cpp
GGUF file with a byte-level BPE tokenizer. The weights are random; these files
exist to exercise file handling (errors, atomic writes), not numerics."""

from __future__ import annotations

import json
import os

import numpy as np

LLAMA = dict(vocab_size=258, hidden_size=32, intermediate_size=48,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def _tensors(seed: int) -> dict[str, np.ndarray]:
  """Hugging Face names -> float32 weights of a tied Llama of LLAMA's shape."""
  c = LLAMA
  rng = np.random.default_rng(seed)
  d, m = c["hidden_size"], c["intermediate_size"]
  e = d // c["num_attention_heads"]
  kv = c["num_key_value_heads"] * e
  shapes = {"model.embed_tokens.weight": (c["vocab_size"], d),
            "model.norm.weight": (d,)}
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    shapes.update({p + "input_layernorm.weight": (d,),
                   p + "self_attn.q_proj.weight": (d, d),
                   p + "self_attn.k_proj.weight": (kv, d),
                   p + "self_attn.v_proj.weight": (kv, d),
                   p + "self_attn.o_proj.weight": (d, d),
                   p + "post_attention_layernorm.weight": (d,),
                   p + "mlp.gate_proj.weight": (m, d),
                   p + "mlp.up_proj.weight": (m, d),
                   p + "mlp.down_proj.weight": (d, m)})
  return {name: rng.standard_normal(shape).astype(np.float32) * 0.1
          for name, shape in shapes.items()}


def write_hf(directory: str, seed: int = 0) -> str:
  """A Hugging Face Llama checkpoint directory; returns it."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  config = dict(LLAMA, model_type="llama", hidden_act="silu", rms_norm_eps=1e-5,
                tie_word_embeddings=True, bos_token_id=1)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  save_file(_tensors(seed), os.path.join(directory, "model.safetensors"))
  return directory


def _gpt2_byte_alphabet() -> list[str]:
  """GPT-2's printable stand-ins for the 256 bytes (its published table)."""
  printable = (list(range(ord("!"), ord("~") + 1)) +
               list(range(ord("¡"), ord("¬") + 1)) +
               list(range(ord("®"), ord("ÿ") + 1)))
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return [chars[b] for b in range(256)]


def write_gguf(path: str, seed: int = 0) -> str:
  """A GGUF file of the same Llama with a byte-level BPE tokenizer (the 256
  byte tokens, one merge " t", <|endoftext|> = 257, also BOS) and a chat
  template."""
  import gguf  # pylint: disable=g-import-not-at-top
  c = LLAMA
  writer = gguf.GGUFWriter(path, "llama")
  writer.add_block_count(c["num_hidden_layers"])
  writer.add_context_length(256)
  writer.add_embedding_length(c["hidden_size"])
  writer.add_feed_forward_length(c["intermediate_size"])
  writer.add_head_count(c["num_attention_heads"])
  writer.add_head_count_kv(c["num_key_value_heads"])
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_vocab_size(c["vocab_size"])
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("gpt2")
  writer.add_token_list(_gpt2_byte_alphabet() + ["Ġt", "<|endoftext|>"])
  writer.add_token_types([1] * 257 + [3])
  writer.add_token_merges(["Ġ t"])
  writer.add_eos_token_id(257)
  writer.add_bos_token_id(257)
  writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
  layer_names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
                 "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
  for name, value in _tensors(seed).items():
    if name == "model.embed_tokens.weight":
      gguf_name = "token_embd.weight"
    elif name == "model.norm.weight":
      gguf_name = "output_norm.weight"
    else:  # model.layers.{i}.{hf}.weight (Q/K row order is irrelevant here)
      _, _, i, rest = name.split(".", 3)
      gguf_name = f"blk.{i}.{layer_names[rest[:-len('.weight')]]}.weight"
    writer.add_tensor(gguf_name, value)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path
