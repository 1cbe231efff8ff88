"""Byte-level BPE (GPT-2 style) from a GGUF file's metadata, over `tokenizers`.

    tokenizer = BpeTokenizer.from_gguf_metadata(gguf.read_metadata("smollm2"))
    ids = tokenizer.encode("<|im_start|>user\\nHi!<|im_end|>\\n")
    text = tokenizer.decode(ids)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi!"}])

The header's vocabulary, merges and token types become a `tokenizers.Tokenizer`:
a BPE model, the pre-tokenizer its `tokenizer.ggml.pre` names
(`PRE_TOKENIZERS`), GPT-2's byte-level decoder, and the added tokens. Tokens the
GGUF marks as control (type 3, e.g. `<|im_start|>`) are special tokens, cut out
of the text whole only with `allow_special=True` (the default, as `transformers`
and llama.cpp encode chat prompts); user-defined tokens (type 4) are always cut
out, as both references do. `tokenizers` keeps the Unicode classes of the
pre-tokenizer regexes and the BPE merge loop; this module keeps the GGUF
specifics and the bytes of every id, so `decode_bytes` never loses anything and
`IncrementalDecoder` prints text as soon as characters complete.

Which pre-tokenizer is right for SmolLM2 (`tokenizer.ggml.pre = 'smollm'`): the
model was trained with its hub `tokenizer.json`, whose pre-tokenizer is
`Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]`: every
number character is cut out alone, then GPT-2's regex runs on each stretch
between them. llama.cpp's "smollm" does the same (regexes `\\p{N}`, then GPT-2's).
`transformers` (5.x) has no entry for "smollm" when it loads a GGUF and falls
back to GPT-2's regex alone, which differs where whitespace runs up to a digit:
"a   1" is [a, "  ", " 1"] there and [a, "   ", 1] in the original. This module
follows the original; `tests/test_bpe_tokenizer.py` shows both cases.

Saved form (`save`): `tokenizers`' own `tokenizer.json` and a
`tokenizer_config.json` with the chat template, the special tokens and the
GGUF token types, the layout of a Hugging Face tokenizer folder. The
`bpe_tokenizer.json` of earlier fam-jax versions still loads (`from_dict`).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable, Mapping, Sequence

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from fam_jax.jsonfile import read_json
from fam_jax.text import chat
from fam_jax.text.tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE

# Token types as llama.cpp numbers them (`tokenizer.ggml.token_type`).
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
TOKEN_TYPE_UNUSED = 5
TOKEN_TYPE_BYTE = 6

_LEGACY_FORMAT_VERSION = 1  # bpe_tokenizer.json, the saved form before this one
_CONFIG_FORMAT = "fam-jax-bpe/2"


def byte_alphabet() -> dict[int, str]:
  """GPT-2's spelling of bytes as printable characters.

  Printable Latin-1 bytes stand for themselves; the other 68 bytes take the
  characters from U+0100 on, in byte order (so a space is "Ġ", a newline "Ċ").

  Returns:
    byte value -> the one-character string that spells it in the vocabulary.
  """
  printable = (list(range(ord("!"), ord("~") + 1)) +
               list(range(ord("¡"), ord("¬") + 1)) +
               list(range(ord("®"), ord("ÿ") + 1)))
  spelling = {b: chr(b) for b in printable}
  next_char = 256
  for b in range(256):
    if b not in spelling:
      spelling[b] = chr(next_char)
      next_char += 1
  return spelling


def _gpt2() -> pre_tokenizers.PreTokenizer:
  """GPT-2's regex `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+|
  ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`, then bytes spelled as characters."""
  return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _smollm() -> pre_tokenizers.PreTokenizer:
  """Each number character alone, then GPT-2's regex on what lies between."""
  return pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True), _gpt2()])


# `tokenizer.ggml.pre` name -> the pre-tokenizer that splits text into words.
PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    "gpt2": _gpt2,
    "smollm": _smollm,
}


def _check_pre_tokenizer(name: str) -> None:
  if name not in PRE_TOKENIZERS:
    raise ValueError(f"unknown pre-tokenizer {name!r}; known: "
                     f"{sorted(PRE_TOKENIZERS)}")


def pre_tokenize(text: str, name: str) -> list[str]:
  """Splits text into the words BPE merges within.

  Args:
    text: text without added tokens.
    name: a key of `PRE_TOKENIZERS` (the GGUF's `tokenizer.ggml.pre`).

  Returns:
    The words, in order; they concatenate back to `text`.
  """
  _check_pre_tokenizer(name)
  words = PRE_TOKENIZERS[name]().pre_tokenize_str(text)
  return [text[start:end] for _, (start, end) in words]


class BpeTokenizer:
  """Byte-level BPE over a GGUF vocabulary; implements `tokenizer.Tokenizer`.

  Attributes:
    tokens: the vocabulary, id -> token spelled in the byte alphabet.
    merges: the merges, best first, each "left right".
    token_types: id -> llama.cpp token type (1 normal, 3 control, ...).
    bos_id / eos_id / unk_id / pad_id: special ids (None where absent).
    special_ids: the control tokens matched in text as such.
    pre_tokenizer: a key of `PRE_TOKENIZERS`.
    chat_template: the Jinja chat template, or None.
    add_bos_token: whether `encode` starts every text with `bos_id`.
  """

  def __init__(self, tokens: Sequence[str], merges: Sequence[str],
               token_types: Sequence[int] | None = None, *, eos_id: int,
               bos_id: int | None = None, unk_id: int | None = None,
               pad_id: int | None = None, pre_tokenizer: str = "gpt2",
               chat_template: str | None = None, add_bos_token: bool = False):
    """Builds the `tokenizers.Tokenizer` of a GGUF vocabulary.

    Args:
      tokens: vocabulary in id order (`tokenizer.ggml.tokens`).
      merges: "left right" pairs in rank order (`tokenizer.ggml.merges`).
      token_types: one llama.cpp type per token; None means all normal.
      eos_id, bos_id, unk_id, pad_id: special token ids.
      pre_tokenizer: the GGUF's `tokenizer.ggml.pre`.
      chat_template: the GGUF's `tokenizer.chat_template`.
      add_bos_token: the GGUF's `tokenizer.ggml.add_bos_token`.

    Raises:
      ValueError: on an unknown pre-tokenizer, a token type list of the wrong
        length, a special id outside the vocabulary, or a merge whose parts or
        result are not in the vocabulary.
    """
    tokens = list(tokens)
    types = ([TOKEN_TYPE_NORMAL] * len(tokens) if token_types is None
             else [int(t) for t in token_types])
    if len(types) != len(tokens):
      raise ValueError(f"{len(types)} token types for {len(tokens)} tokens")
    _check_pre_tokenizer(pre_tokenizer)
    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = []
    # A pair listed twice keeps its first (best) rank.
    for rank, merge in enumerate(dict.fromkeys(merges)):
      parts = merge.split(" ")
      if len(parts) != 2:
        raise ValueError(f"merge {rank} {merge!r} is not two tokens")
      if any(p not in vocab for p in parts + ["".join(parts)]):
        raise ValueError(f"merge {rank} {merge!r} uses or makes a token that "
                         "is not in the vocabulary")
      pairs.append(tuple(parts))
    # No unknown token: bytes the vocabulary lacks (SmolLM2 has no token for
    # 21 of them) are dropped, as the reference does.
    tokenizer = tokenizers.Tokenizer(models.BPE(vocab, pairs))
    tokenizer.pre_tokenizer = PRE_TOKENIZERS[pre_tokenizer]()
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = set(byte_alphabet().values())
    added = lambda i, special: tokenizers.AddedToken(
        tokens[i], special=special, normalized=False)
    tokenizer.add_special_tokens([
        added(i, True) for i, t in enumerate(types)
        if t == TOKEN_TYPE_CONTROL and tokens[i] and set(tokens[i]) <= alphabet])
    tokenizer.add_tokens([added(i, False) for i, t in enumerate(types)
                          if t == TOKEN_TYPE_USER_DEFINED and tokens[i]])
    self._attach(tokenizer, tokens, types, eos_id=eos_id, bos_id=bos_id,
                 unk_id=unk_id, pad_id=pad_id, pre_tokenizer=pre_tokenizer,
                 chat_template=chat_template, add_bos_token=add_bos_token)

  def _attach(self, tokenizer: tokenizers.Tokenizer, tokens: list[str],
              token_types: list[int], *, eos_id, bos_id, unk_id, pad_id,
              pre_tokenizer, chat_template, add_bos_token) -> None:
    """Wraps a built `tokenizers.Tokenizer`, with what it does not hold."""
    self._tokenizer = tokenizer
    self.tokens = tokens
    self.vocab_size = len(tokens)
    self.token_types = token_types
    for name, value in (("eos_id", eos_id), ("bos_id", bos_id),
                        ("unk_id", unk_id), ("pad_id", pad_id)):
      if value is not None and not 0 <= value < self.vocab_size:
        raise ValueError(f"{name}={value} is outside the vocabulary "
                         f"(size {self.vocab_size})")
    self.eos_id = int(eos_id)
    self.bos_id, self.unk_id, self.pad_id = bos_id, unk_id, pad_id
    self.pre_tokenizer = pre_tokenizer
    self.chat_template = chat_template
    self.add_bos_token = bool(add_bos_token)
    self.special_ids = frozenset(
        i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)
    # The bytes of every id: control and user-defined tokens (and any token
    # outside the byte alphabet) stand for their own text.
    reading = {char: b for b, char in byte_alphabet().items()}
    self._token_bytes = [
        token.encode("utf-8")
        if kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
        or any(char not in reading for char in token)
        else bytes(reading[char] for char in token)
        for token, kind in zip(self.tokens, token_types)]

  @functools.cached_property
  def _text_only(self) -> tokenizers.Tokenizer:
    """A copy that encodes control tokens written in text as plain text."""
    copy = tokenizers.Tokenizer.from_str(self._tokenizer.to_str())
    copy.encode_special_tokens = True
    return copy

  @property
  def merges(self) -> list[str]:
    model = json.loads(self._tokenizer.to_str())["model"]
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]

  # -- constructors -----------------------------------------------------------

  @classmethod
  def from_gguf_metadata(cls, meta: Mapping[str, Any]) -> "BpeTokenizer":
    """The tokenizer a GGUF header describes.

    Args:
      meta: `fam_jax.convert.gguf.read_metadata(path)`.

    Returns:
      The tokenizer, with the file's chat template and special ids.

    Raises:
      ValueError: the file has no tokenizer, or one that is not GPT-2-style
        byte-level BPE (`tokenizer.ggml.model` other than 'gpt2', e.g. 'llama'
        for SentencePiece), or an unknown pre-tokenizer.
    """
    model = meta.get("tokenizer.ggml.model")
    if model is None:
      raise ValueError("the GGUF metadata has no tokenizer.ggml.model")
    if model != "gpt2":
      raise ValueError(f"tokenizer.ggml.model is {model!r}; only 'gpt2' "
                       "(GPT-2-style byte-level BPE) is supported")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
      raise ValueError(f"tokenizer.ggml.pre is {pre!r}; known pre-tokenizers: "
                       f"{sorted(PRE_TOKENIZERS)}")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                "tokenizer.ggml.eos_token_id"):
      if key not in meta:
        raise ValueError(f"the GGUF metadata has no {key}")
    return cls(
        meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.merges"],
        meta.get("tokenizer.ggml.token_type"),
        eos_id=int(meta["tokenizer.ggml.eos_token_id"]),
        bos_id=_optional_int(meta.get("tokenizer.ggml.bos_token_id")),
        unk_id=_optional_int(meta.get("tokenizer.ggml.unknown_token_id")),
        pad_id=_optional_int(meta.get("tokenizer.ggml.padding_token_id")),
        pre_tokenizer=pre,
        chat_template=meta.get("tokenizer.chat_template"),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)))

  def to_dict(self) -> dict[str, Any]:
    """Everything needed to rebuild this tokenizer, as JSON-able data (the
    `bpe_tokenizer.json` of earlier fam-jax versions)."""
    return {
        "format_version": _LEGACY_FORMAT_VERSION,
        "tokens": self.tokens, "merges": self.merges,
        "token_types": self.token_types, "bos_id": self.bos_id,
        "eos_id": self.eos_id, "unk_id": self.unk_id, "pad_id": self.pad_id,
        "pre_tokenizer": self.pre_tokenizer,
        "chat_template": self.chat_template,
        "add_bos_token": self.add_bos_token,
    }

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "BpeTokenizer":
    """Inverse of `to_dict`; reads `bpe_tokenizer.json` files."""
    version = data.get("format_version")
    if version != _LEGACY_FORMAT_VERSION:
      raise ValueError(f"BPE tokenizer format version {version!r}; this code "
                       f"reads version {_LEGACY_FORMAT_VERSION}")
    return cls(data["tokens"], data["merges"], data["token_types"],
               eos_id=data["eos_id"], bos_id=data["bos_id"],
               unk_id=data["unk_id"], pad_id=data["pad_id"],
               pre_tokenizer=data["pre_tokenizer"],
               chat_template=data["chat_template"],
               add_bos_token=data["add_bos_token"])

  def save(self, directory: str) -> None:
    """Stores this tokenizer in a (checkpoint) directory: `tokenizers`'
    tokenizer.json and tokenizer_config.json; `load` reads them back, and so
    does `transformers.AutoTokenizer.from_pretrained(directory)`."""
    os.makedirs(directory, exist_ok=True)
    self._tokenizer.save(os.path.join(directory, TOKENIZER_FILE))
    text = lambda i: None if i is None else self.tokens[i]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": text(self.bos_id), "eos_token": text(self.eos_id),
        "unk_token": text(self.unk_id), "pad_token": text(self.pad_id),
        "add_bos_token": self.add_bos_token,
        "chat_template": self.chat_template,
        "fam_jax": {
            "format": _CONFIG_FORMAT, "pre_tokenizer": self.pre_tokenizer,
            "bos_id": self.bos_id, "eos_id": self.eos_id,
            "unk_id": self.unk_id, "pad_id": self.pad_id,
            # GGUF token types other than normal, by id.
            "token_types": {str(i): t for i, t in enumerate(self.token_types)
                            if t != TOKEN_TYPE_NORMAL},
        },
    }
    with open(os.path.join(directory, TOKENIZER_CONFIG_FILE), "w",
              encoding="utf-8") as f:
      json.dump(config, f, ensure_ascii=False, indent=2)

  @classmethod
  def load(cls, directory: str) -> "BpeTokenizer":
    """Reads what `save` wrote."""
    config_path = os.path.join(directory, TOKENIZER_CONFIG_FILE)
    config = read_json(config_path)
    ours = config.get("fam_jax") if isinstance(config, dict) else None
    ours = ours if isinstance(ours, dict) else {}
    if ours.get("format") != _CONFIG_FORMAT:
      raise ValueError(f"{config_path}: not written by BpeTokenizer.save "
                       f"(fam_jax.format {ours.get('format')!r}, expected "
                       f"{_CONFIG_FORMAT!r})")
    path = os.path.join(directory, TOKENIZER_FILE)
    try:
      tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # pylint: disable=broad-except
      # tokenizers raises a bare Exception for a missing or damaged file.
      raise ValueError(f"{path}: not a readable tokenizers file ({e})") from None
    ids = tokenizer.get_vocab(with_added_tokens=True)
    # An id no token maps to (a GGUF token listed twice) decodes to nothing.
    tokens = [""] * (max(ids.values()) + 1)
    for token, i in ids.items():
      tokens[i] = token
    types = [TOKEN_TYPE_NORMAL] * len(tokens)
    for i, t in ours["token_types"].items():
      types[int(i)] = int(t)
    self = cls.__new__(cls)
    self._attach(tokenizer, tokens, types, eos_id=ours["eos_id"],
                 bos_id=ours["bos_id"],
                 unk_id=ours["unk_id"], pad_id=ours["pad_id"],
                 pre_tokenizer=ours["pre_tokenizer"],
                 chat_template=config.get("chat_template"),
                 add_bos_token=config.get("add_bos_token", False))
    return self

  # -- encoding and decoding --------------------------------------------------

  def encode(self, text: str, allow_special: bool = True,
             add_bos: bool | None = None) -> list[int]:
    """Text -> ids.

    Args:
      text: any string.
      allow_special: whether control tokens written in the text (such as
        `<|im_start|>`) become their ids, as the references do by default for
        chat prompts. With False they are encoded as ordinary text, which is
        what untrusted user text should get. User-defined tokens (type 4) are
        matched either way.
      add_bos: start with `bos_id`; None follows `add_bos_token` (False for
        SmolLM2).

    Returns:
      The ids. Bytes the vocabulary has no token for are dropped, as in the
      reference.
    """
    if add_bos is None:
      add_bos = self.add_bos_token
    ids = [self.bos_id] if add_bos and self.bos_id is not None else []
    tokenizer = self._tokenizer if allow_special else self._text_only
    return ids + tokenizer.encode(text, add_special_tokens=False).ids

  def decode_bytes(self, ids: Sequence[int],
                   skip_special: bool = False) -> bytes:
    """Ids -> the bytes they stand for.

    Args:
      ids: token ids; ids outside the vocabulary are skipped (as
        `ByteTokenizer` does: a model may have more ids than its tokenizer).
      skip_special: leave out control tokens (like `<|im_end|>`).

    Returns:
      The concatenated bytes, which may end inside a UTF-8 character.
    """
    table, size = self._token_bytes, self.vocab_size
    special = self.special_ids if skip_special else frozenset()
    return b"".join(table[i] for i in ids
                    if 0 <= i < size and i not in special)

  def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
    """Ids -> text; invalid UTF-8 becomes U+FFFD, as in the references."""
    return self.decode_bytes(ids, skip_special).decode("utf-8",
                                                       errors="replace")

  def token_to_id(self, token: str) -> int | None:
    """The id of a vocabulary entry (spelled in the byte alphabet), or None."""
    return self._tokenizer.token_to_id(token)

  # -- chat -------------------------------------------------------------------

  def special_token_strings(self) -> dict[str, str]:
    """bos/eos/unk/pad as text, the variables a chat template may use."""
    names = {"bos_token": self.bos_id, "eos_token": self.eos_id,
             "unk_token": self.unk_id, "pad_token": self.pad_id}
    return {name: self.tokens[i] for name, i in names.items() if i is not None}

  def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                          add_generation_prompt: bool = True,
                          **template_variables: Any) -> str:
    """Renders messages with this tokenizer's chat template (see `chat.py`).

    Args:
      messages: [{"role": ..., "content": ...}, ...].
      add_generation_prompt: end with the header of an assistant reply.
      **template_variables: more variables for the template.

    Returns:
      The prompt text; `encode` it (control tokens allowed) for the ids.
    """
    if self.chat_template is None:
      raise ValueError("this tokenizer has no chat template")
    variables = {**self.special_token_strings(), **template_variables}
    return chat.render_chat_template(
        self.chat_template, messages,
        add_generation_prompt=add_generation_prompt, **variables)

  def encode_chat(self, messages: Sequence[Mapping[str, Any]],
                  add_generation_prompt: bool = True) -> list[int]:
    """The ids of a chat prompt, as `apply_chat_template(tokenize=True)` in
    `transformers` gives them: no BOS added (the template writes its own), and
    control tokens are matched in the messages too."""
    return self.encode(self.apply_chat_template(messages,
                                                add_generation_prompt),
                       allow_special=True, add_bos=False)


def _optional_int(value: Any) -> int | None:
  return None if value is None else int(value)
