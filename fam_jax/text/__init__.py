"""Text and token ids: tokenizers and chat templates.

Floors, each importing only the ones above it:
- `tokenizer.py`: the `Tokenizer` interface, `ByteTokenizer` (the ids of
  seqio's byte vocabulary), `IncrementalDecoder`, the files a checkpoint keeps
  its tokenizer in;
- `chat.py`: chat templates, rendered as `transformers` renders them;
- `bpe.py`: `BpeTokenizer`, the byte-level BPE of GGUF models, an adapter over
  a `tokenizers.Tokenizer` (needs the `tokenizers` package: the gguf extra);
- `loading.py`: `load_tokenizer`, the tokenizer of a checkpoint directory.
"""
