"""Byte-level BPE tokenizer (GPT-2 style) built from a GGUF file's metadata.

    tokenizer = BpeTokenizer.from_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    ids = tokenizer.encode("<|im_start|>user\\nHi!<|im_end|>\\n")
    text = tokenizer.decode(ids)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi!"}])

Encoding runs in three steps, each as the reference tokenizer does it:
1. Added tokens: tokens the GGUF marks as control (type 3, e.g. `<|im_start|>`)
   or user-defined (type 4) are cut out of the text whole, longest first, and
   become their single ids. Control tokens are matched only with
   `allow_special=True` (the default, as `transformers` and llama.cpp encode
   chat prompts); user-defined tokens are always matched, as both references do.
2. Pre-tokenization: the rest of the text is split into words by the regular
   expression of the GGUF's `tokenizer.ggml.pre` (see `PRE_TOKENIZERS`).
3. BPE: each word's UTF-8 bytes, spelled in GPT-2's byte alphabet, are merged
   pair by pair, always the pair of lowest merge rank, leftmost first.

Decoding maps each id back to its bytes, so `decode_bytes` never loses
anything and `IncrementalDecoder` can print text as soon as characters complete.

Which reference is right for SmolLM2 (`tokenizer.ggml.pre = 'smollm'`): the model
was trained with its hub `tokenizer.json`, whose pre-tokenizer is
`Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]`: every
number character is cut out alone, then GPT-2's regex runs on each stretch
between them. llama.cpp's "smollm" does the same (regexes `\\p{N}`, then GPT-2's).
`transformers` (5.x) has no entry for "smollm" when it loads a GGUF and falls
back to GPT-2's regex alone, which differs where whitespace runs up to a digit:
"a   1" is [a, "  ", " 1"] there and [a, "   ", 1] in the original. This module
follows the original; `tests/test_bpe_tokenizer.py` shows both cases.
"""

from __future__ import annotations

import functools
import heapq
import json
import os
import re
import unicodedata
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from fam_jax import tokenizer as tokenizer_lib

# Token types as llama.cpp numbers them (`tokenizer.ggml.token_type`).
TOKEN_TYPE_NORMAL = 1
TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
TOKEN_TYPE_UNUSED = 5
TOKEN_TYPE_BYTE = 6

BPE_TOKENIZER_FILE = "bpe_tokenizer.json"
_FILE_FORMAT_VERSION = 1


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


# ---------------------------------------------------------------------------
# Pre-tokenization.
#
# The references' regexes use \p{L} (letters), \p{N} (numbers) and \s. Python's
# `re` has none of the first two and its \s also takes U+001C..U+001F, so the
# classes are spelled out here from `unicodedata`:
# - whitespace is Unicode's White_Space property (what Oniguruma's and Rust's
#   \s match);
# - letters and numbers are the general categories L* and N*, plus the code
#   points below. `tokenizers` 0.23 matches \p{L} and \p{N} with Unicode 16.0
#   (Oniguruma) but isolates digits (`Digits`) with Unicode 17.0 (Rust's
#   `char::is_numeric`), while Python 3.11's `unicodedata` is Unicode 14.0;
#   these ranges are the letters and numbers assigned since, measured by running
#   `tokenizers` on every code point (none were reclassified the other way).
# The tests check every code point of planes 0-3 and 14 against `tokenizers`.
_WHITESPACE = ("\t\n\x0b\x0c\r\x20\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004"
               "\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f"
               "\u3000")
_LETTERS_SINCE_UNICODE_14 = (
    (0x1C89, 0x1C8A), (0xA7CB, 0xA7CD), (0xA7DA, 0xA7DC), (0x105C0, 0x105F3),
    (0x10D4A, 0x10D65), (0x10D6F, 0x10D85), (0x10EC2, 0x10EC4),
    (0x1123F, 0x11240), (0x11380, 0x11389), (0x1138B, 0x1138B),
    (0x1138E, 0x1138E), (0x11390, 0x113B5), (0x113B7, 0x113B7),
    (0x113D1, 0x113D1), (0x113D3, 0x113D3), (0x11BC0, 0x11BE0),
    (0x11F02, 0x11F02), (0x11F04, 0x11F10), (0x11F12, 0x11F33),
    (0x1342F, 0x1342F), (0x13441, 0x13446), (0x13460, 0x143FA),
    (0x16100, 0x1611D), (0x16D40, 0x16D6C), (0x18CFF, 0x18CFF),
    (0x1B132, 0x1B132), (0x1B155, 0x1B155), (0x1DF25, 0x1DF2A),
    (0x1E030, 0x1E06D), (0x1E4D0, 0x1E4EB), (0x1E5D0, 0x1E5ED),
    (0x1E5F0, 0x1E5F0), (0x2B739, 0x2B739), (0x2EBF0, 0x2EE5D),
    (0x31350, 0x323AF),
)
_NUMBERS_SINCE_UNICODE_14 = (
    (0x10D40, 0x10D49), (0x116D0, 0x116E3), (0x11BF0, 0x11BF9),
    (0x11F50, 0x11F59), (0x16130, 0x16139), (0x16D70, 0x16D79),
    (0x1CCF0, 0x1CCF9), (0x1D2C0, 0x1D2D3), (0x1E4F0, 0x1E4F9),
    (0x1E5F1, 0x1E5FA),
)
# Numbers new in Unicode 17.0: isolated by `Digits`, not \p{N} for Oniguruma.
_NUMBERS_OF_UNICODE_17 = ((0x11DE0, 0x11DE9), (0x16FF4, 0x16FF6))


def _ranges_to_class(ranges: Iterable[tuple[int, int]]) -> str:
  """The inside of a regex character class matching the given code points."""
  return "".join(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}"
                 for lo, hi in ranges)


def _merge_ranges(code_points: Iterable[int]) -> list[tuple[int, int]]:
  """Sorted code points -> maximal runs (first, last)."""
  ranges: list[list[int]] = []
  for cp in code_points:
    if ranges and ranges[-1][1] == cp - 1:
      ranges[-1][1] = cp
    else:
      ranges.append([cp, cp])
  return [(lo, hi) for lo, hi in ranges]


class _UnicodeClasses(NamedTuple):
  """Regex character-class bodies (the text between the brackets)."""
  letters: str  # \p{L}
  numbers: str  # \p{N} in a regex
  digits: str  # what `Digits(individual_digits=True)` isolates
  whitespace: str  # \s


@functools.cache
def _unicode_classes() -> _UnicodeClasses:
  """The classes above, built once per process (about 0.3 s)."""
  letters, numbers = set(), set()
  for cp in range(0x110000):
    category = unicodedata.category(chr(cp))
    if category[0] == "L":
      letters.add(cp)
    elif category[0] == "N":
      numbers.add(cp)
  for ranges, target in ((_LETTERS_SINCE_UNICODE_14, letters),
                         (_NUMBERS_SINCE_UNICODE_14, numbers)):
    for lo, hi in ranges:
      target.update(range(lo, hi + 1))
  digits = set(numbers)
  for lo, hi in _NUMBERS_OF_UNICODE_17:
    digits.update(range(lo, hi + 1))
  return _UnicodeClasses(
      letters=_ranges_to_class(_merge_ranges(sorted(letters))),
      numbers=_ranges_to_class(_merge_ranges(sorted(numbers))),
      digits=_ranges_to_class(_merge_ranges(sorted(digits))),
      whitespace=_ranges_to_class((ord(c), ord(c)) for c in _WHITESPACE))


_CONTRACTIONS = "'s|'t|'re|'ve|'m|'ll|'d"


def _gpt2_pattern() -> str:
  """GPT-2's pre-tokenizer regex (`ByteLevel(use_regex=True)` in `tokenizers`):
  `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+`."""
  classes = _unicode_classes()
  letter, number, space = classes.letters, classes.numbers, classes.whitespace
  return (f"{_CONTRACTIONS}| ?[{letter}]+| ?[{number}]+"
          f"| ?[^{space}{letter}{number}]+|[{space}]+(?![^{space}])|[{space}]+")


def _smollm_pattern() -> str:
  """SmolLM's pre-tokenizer as one regex: each number character alone, and
  GPT-2's regex on the stretches between them.

  Run on a stretch, GPT-2's regex never reaches past the stretch, so one pass
  over the whole text gives the same words as the two passes of the reference,
  provided that (a) a number character is a word by itself (first alternative;
  GPT-2's ` ?\\p{N}+` can then never match) and (b) the end of a stretch counts
  as the end of the text for `\\s+(?!\\S)`: whitespace may also end right before
  a number character.
  """
  classes = _unicode_classes()
  letter, digit, space = classes.letters, classes.digits, classes.whitespace
  return (f"[{digit}]|{_CONTRACTIONS}| ?[{letter}]+"
          f"| ?[^{space}{letter}{digit}]+"
          f"|[{space}]+(?![^{space}{digit}])|[{space}]+")


# `tokenizer.ggml.pre` name -> the regex that splits text into words.
PRE_TOKENIZERS = {
    "gpt2": _gpt2_pattern,
    "smollm": _smollm_pattern,
}


@functools.cache
def _compiled_pre_tokenizer(name: str) -> re.Pattern[str]:
  if name not in PRE_TOKENIZERS:
    raise ValueError(f"unknown pre-tokenizer {name!r}; known: "
                     f"{sorted(PRE_TOKENIZERS)}")
  return re.compile(PRE_TOKENIZERS[name]())


def pre_tokenize(text: str, name: str) -> list[str]:
  """Splits text into the words BPE merges within.

  Args:
    text: text without added tokens.
    name: a key of `PRE_TOKENIZERS` (the GGUF's `tokenizer.ggml.pre`).

  Returns:
    The words, in order; they concatenate back to `text`.
  """
  return _compiled_pre_tokenizer(name).findall(text)


# ---------------------------------------------------------------------------
# The tokenizer.


class BpeTokenizer:
  """Byte-level BPE over a GGUF vocabulary; implements `tokenizer.Tokenizer`.

  Attributes:
    tokens: the vocabulary, id -> token spelled in the byte alphabet.
    merges: the merges, best first, each "left right".
    token_types: id -> llama.cpp token type (1 normal, 3 control, ...).
    bos_id / eos_id / unk_id / pad_id: special ids (None where absent).
    pre_tokenizer: a key of `PRE_TOKENIZERS`.
    chat_template: the Jinja chat template, or None.
    add_bos_token: whether `encode` starts every text with `bos_id`.
  """

  # Words cached with their ids; the cache is emptied when it grows past this.
  _CACHE_LIMIT = 200_000

  def __init__(self, tokens: Sequence[str], merges: Sequence[str],
               token_types: Sequence[int] | None = None, *, eos_id: int,
               bos_id: int | None = None, unk_id: int | None = None,
               pad_id: int | None = None, pre_tokenizer: str = "gpt2",
               chat_template: str | None = None, add_bos_token: bool = False):
    """Builds the merge table and the added-token matchers.

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
    self.tokens = list(tokens)
    self.merges = list(merges)
    self.token_types = ([TOKEN_TYPE_NORMAL] * len(self.tokens)
                        if token_types is None else [int(t) for t in token_types])
    if len(self.token_types) != len(self.tokens):
      raise ValueError(f"{len(self.token_types)} token types for "
                       f"{len(self.tokens)} tokens")
    self.vocab_size = len(self.tokens)
    for name, value in (("eos_id", eos_id), ("bos_id", bos_id),
                        ("unk_id", unk_id), ("pad_id", pad_id)):
      if value is not None and not 0 <= value < self.vocab_size:
        raise ValueError(f"{name}={value} is outside the vocabulary "
                         f"(size {self.vocab_size})")
    self.eos_id = int(eos_id)
    self.bos_id, self.unk_id, self.pad_id = bos_id, unk_id, pad_id
    _compiled_pre_tokenizer(pre_tokenizer)  # Fails early on an unknown name.
    self.pre_tokenizer = pre_tokenizer
    self.chat_template = chat_template
    self.add_bos_token = bool(add_bos_token)

    spelling = byte_alphabet()
    reading = {char: b for b, char in spelling.items()}
    self._id_of = {token: i for i, token in enumerate(self.tokens)}
    # byte -> id of the one-byte token; None where the vocabulary lacks it
    # (SmolLM2 has no token for 21 bytes). The reference BPE has no unknown
    # token, so such bytes are dropped, as `tokenizers` does.
    self._byte_ids = [self._id_of.get(spelling[b]) for b in range(256)]
    self._token_bytes = []
    for token, token_type in zip(self.tokens, self.token_types):
      if token_type in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED) or any(
          char not in reading for char in token):
        self._token_bytes.append(token.encode("utf-8"))  # Stored as text.
      else:
        self._token_bytes.append(bytes(reading[char] for char in token))

    # (left id, right id), packed into one int -> (rank, merged id).
    self._merge_table: dict[int, tuple[int, int]] = {}
    for rank, merge in enumerate(self.merges):
      parts = merge.split(" ")
      if len(parts) != 2:
        raise ValueError(f"merge {rank} {merge!r} is not two tokens")
      ids = [self._id_of.get(p) for p in parts + ["".join(parts)]]
      if None in ids:
        raise ValueError(f"merge {rank} {merge!r} uses or makes a token that "
                         "is not in the vocabulary")
      # A pair listed twice keeps its first (best) rank.
      self._merge_table.setdefault(ids[0] * self.vocab_size + ids[1],
                                   (rank, ids[2]))

    alphabet = set(reading)
    control = [i for i, t in enumerate(self.token_types)
               if t == TOKEN_TYPE_CONTROL and set(self.tokens[i]) <= alphabet]
    user_defined = [i for i, t in enumerate(self.token_types)
                    if t == TOKEN_TYPE_USER_DEFINED]
    self.special_ids = frozenset(control)
    self._added_matchers = {
        True: self._added_token_matcher(control + user_defined),
        False: self._added_token_matcher(user_defined),
    }
    self._cache: dict[str, tuple[int, ...]] = {}

  def _added_token_matcher(self, ids: list[int]) -> re.Pattern[str] | None:
    """A regex finding the tokens `ids` in text, leftmost and then longest."""
    if not ids:
      return None
    texts = sorted({self.tokens[i] for i in ids if self.tokens[i]},
                   key=lambda s: (-len(s), s))
    return re.compile("|".join(map(re.escape, texts)))

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

  @classmethod
  def from_gguf(cls, path: str) -> "BpeTokenizer":
    """The tokenizer stored in a GGUF file (needs the `gguf` package)."""
    from fam_jax.convert.gguf import read_metadata  # pylint: disable=g-import-not-at-top
    return cls.from_gguf_metadata(read_metadata(path))

  def to_dict(self) -> dict[str, Any]:
    """Everything needed to rebuild this tokenizer, as JSON-able data."""
    return {
        "format_version": _FILE_FORMAT_VERSION,
        "tokens": self.tokens, "merges": self.merges,
        "token_types": self.token_types, "bos_id": self.bos_id,
        "eos_id": self.eos_id, "unk_id": self.unk_id, "pad_id": self.pad_id,
        "pre_tokenizer": self.pre_tokenizer,
        "chat_template": self.chat_template,
        "add_bos_token": self.add_bos_token,
    }

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> "BpeTokenizer":
    """Inverse of `to_dict`."""
    version = data.get("format_version")
    if version != _FILE_FORMAT_VERSION:
      raise ValueError(f"BPE tokenizer format version {version!r}; this code "
                       f"reads version {_FILE_FORMAT_VERSION}")
    return cls(data["tokens"], data["merges"], data["token_types"],
               eos_id=data["eos_id"], bos_id=data["bos_id"],
               unk_id=data["unk_id"], pad_id=data["pad_id"],
               pre_tokenizer=data["pre_tokenizer"],
               chat_template=data["chat_template"],
               add_bos_token=data["add_bos_token"])

  def save(self, directory: str) -> None:
    """Stores this tokenizer in a fam-jax checkpoint directory.

    Writes `bpe_tokenizer.json` (vocabulary, merges, types, special ids,
    pre-tokenizer, chat template) and the spec `tokenizer.json` naming it, so
    `tokenizer.load_tokenizer(directory)` rebuilds this tokenizer.
    """
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, BPE_TOKENIZER_FILE), "w",
              encoding="utf-8") as f:
      json.dump(self.to_dict(), f, ensure_ascii=False)
    tokenizer_lib.save_tokenizer_spec(
        directory, {"kind": "bpe", "file": BPE_TOKENIZER_FILE})

  @classmethod
  def load(cls, directory: str,
           filename: str = BPE_TOKENIZER_FILE) -> "BpeTokenizer":
    """Reads what `save` wrote."""
    with open(os.path.join(directory, filename), encoding="utf-8") as f:
      return cls.from_dict(json.load(f))

  # -- encoding ---------------------------------------------------------------

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
    matcher = self._added_matchers[bool(allow_special)]
    if matcher is None:
      ids.extend(self._encode_ordinary(text))
      return ids
    start = 0
    for match in matcher.finditer(text):
      ids.extend(self._encode_ordinary(text[start:match.start()]))
      ids.append(self._id_of[match.group()])
      start = match.end()
    ids.extend(self._encode_ordinary(text[start:]))
    return ids

  def _encode_ordinary(self, text: str) -> list[int]:
    """Pre-tokenization and BPE, without added tokens."""
    ids: list[int] = []
    if not text:
      return ids
    cache = self._cache
    for word in _compiled_pre_tokenizer(self.pre_tokenizer).findall(text):
      word_ids = cache.get(word)
      if word_ids is None:
        word_ids = self._merge_word(word)
        if len(cache) >= self._CACHE_LIMIT:
          cache.clear()
        cache[word] = word_ids
      ids.extend(word_ids)
    return ids

  def _merge_word(self, word: str) -> tuple[int, ...]:
    """BPE on one word: merges the lowest-rank pair, leftmost first, until no
    pair has a merge (a heap of candidate pairs over a linked list)."""
    byte_ids = self._byte_ids
    ids: list[int | None] = [byte_ids[b] for b in word.encode("utf-8")
                             if byte_ids[b] is not None]
    n = len(ids)
    if n < 2:
      return tuple(ids)  # type: ignore[arg-type]
    table, size = self._merge_table, self.vocab_size
    following = list(range(1, n + 1))
    following[-1] = -1
    preceding = list(range(-1, n - 1))
    heap = []
    for i in range(n - 1):
      merge = table.get(ids[i] * size + ids[i + 1])
      if merge is not None:
        heap.append((merge[0], i, merge[1]))
    heapq.heapify(heap)
    while heap:
      rank, i, merged = heapq.heappop(heap)
      j = following[i]
      left = ids[i]
      if left is None or j < 0:
        continue  # The left symbol was merged away, or is now the last one.
      current = table.get(left * size + ids[j])
      if current is None or current[0] != rank:
        continue  # The pair at i changed since this candidate was pushed.
      ids[i], ids[j] = merged, None
      k = following[j]
      following[i] = k
      if k >= 0:
        preceding[k] = i
        merge = table.get(merged * size + ids[k])
        if merge is not None:
          heapq.heappush(heap, (merge[0], i, merge[1]))
      p = preceding[i]
      if p >= 0:
        merge = table.get(ids[p] * size + merged)
        if merge is not None:
          heapq.heappush(heap, (merge[0], p, merge[1]))
    return tuple(x for x in ids if x is not None)

  # -- decoding ---------------------------------------------------------------

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
    return self._id_of.get(token)

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
    from fam_jax import chat  # pylint: disable=g-import-not-at-top
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
