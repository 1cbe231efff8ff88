"""PassKey retrieval: synthetic, deterministic by seed, the paper's prompt.

An example is, lines joined by "\\n" [choice, as in the Landmark-attention
test the paper follows]:

    There is an important info hidden inside a lot of irrelevant text. Find it
    and memorize them. I will quiz you about the important information there.
    The pass key is {k}. Remember it. {k} is the pass key.
    The grass is green. The sky is blue. The sun is yellow. Here we go. ...
    What is the pass key? The pass key is

with target " {k}". There is no filler before the key (as in the paper). Keys
are uniform in 1..50000. The filler is the longest run of whole sentences of
the five-sentence cycle within a token budget drawn uniformly from
[min + s, max], where s bounds the tokens one sentence adds; so its length,
counted in tokens of the vocabulary in force (gin) for the filler text
alone, always lands in [min, max].

Registered tasks:
- `fam_passkey_train`: training, filler 2k-18k tokens (the paper's), LM
  features (`targets`, `loss_weights`: 1 on the answer and EOS only), one
  example per row padded to `sequence_length["targets"]`; endless "train"
  split, 100-example "validation".
- `fam_passkey_train_short`: as `fam_passkey_train` with 256-1024 filler
  tokens, for small models and CPU runs (`gin_configs/train/tiny_passkey.gin`).
- `fam_passkey_train_near`, `fam_passkey_train_far`: fillers of 0-64 and
  64-768 tokens, the prompt weighted 0.1 in the loss: stages of the
  from-scratch CPU-scale model of `benchmarks/passkey.py`.
- `fam_passkey_copy_drill`: a random string of 40-180 characters (digits,
  lowercase letters, space), a newline, the same string again; the first copy
  weighted 0.1. Every token of the second copy rewards copying from context.
- `fam_passkey_train_copy`: `fam_passkey_copy_drill` and
  `fam_passkey_train_near` half and half, the first stage of the CPU-scale
  model. [choice: not in the paper, whose models arrive pretrained and copy
  already. Trained on PassKey rows alone, whose 5 answer tokens per row are
  the only reward for copying, the from-scratch model stayed 0% even inside
  its window for 400 steps (six runs, README); with the drill it copied
  keys inside its window after 500 steps on a CPU and 1,000-3,000 in GPU runs
  of benchmarks/passkey_probe.py (README).]
- `fam_passkey_{1k,4k,16k,64k,256k}`: evaluation, filler of
  [L - 32, L] tokens, `inputs`/`targets` features, metric
  `passkey_accuracy`; "validation" and "test" splits of 100 examples.
Example `i` of a split depends only on (seed, split name, filler range, i).
"""

from __future__ import annotations

import functools
import itertools
import zlib
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
import seqio

from fam_jax.tasks import recipe
from fam_jax.tasks import registration
from fam_jax.tasks import vocabularies

TASK_DESCRIPTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find "
    "it and memorize them. I will quiz you about the important information "
    "there.")
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
FILLER_SENTENCES = ("The grass is green.", "The sky is blue.",
                    "The sun is yellow.", "Here we go.",
                    "There and back again.")
QUESTION = "What is the pass key? The pass key is"
KEY_RANGE = (1, 50000)

TRAIN_FILLER_TOKENS = (2048, 18432)
SHORT_TRAIN_FILLER_TOKENS = (256, 1024)
# From-scratch training at CPU scale (benchmarks/passkey.py): first fillers
# that fit in any window, then longer ones; the prompt weighs 0.1 in the loss.
NEAR_FILLER_TOKENS = (0, 64)
FAR_FILLER_TOKENS = (64, 768)
SCRATCH_PROMPT_WEIGHT = 0.1
COPY_DRILL_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz "
COPY_DRILL_CHARACTERS = (40, 180)
EVAL_FILLER_LENGTHS = {"1k": 1024, "4k": 4096, "16k": 16384, "64k": 65536,
                       "256k": 262144}
EVAL_TOLERANCE = 32  # Evaluation fillers hold [L - 32, L] tokens.
DEFAULT_SEED = 0


def prompt(key: int, filler: str) -> str:
  """The PassKey prompt for `key` around `filler`."""
  return "\n".join([TASK_DESCRIPTION, KEY_LINE.format(key=key), filler,
                    QUESTION])


def filler_text(num_sentences: int) -> str:
  """The first `num_sentences` sentences of the repeated filler."""
  cycle = len(FILLER_SENTENCES)
  return " ".join(FILLER_SENTENCES[i % cycle] for i in range(num_sentences))


_SENTENCE_TOKENS = {}  # id(vocabulary) -> (vocabulary, statistics)


def _sentence_tokens(vocabulary: seqio.Vocabulary) -> tuple[float, int]:
  """(mean tokens per sentence, most tokens one more sentence can add)."""
  if id(vocabulary) not in _SENTENCE_TOKENS:  # Vocabularies are unhashable.
    sample = 10 * len(FILLER_SENTENCES)
    mean = len(vocabulary.encode(filler_text(sample))) / sample
    step = max(len(vocabulary.encode(filler_text(n + 1)))
               - len(vocabulary.encode(filler_text(n)))
               for n in range(1, 2 * len(FILLER_SENTENCES) + 1))
    # +1: a tokenizer may merge tokens across the sentence boundary.
    _SENTENCE_TOKENS[id(vocabulary)] = (vocabulary, (mean, step + 1))
  return _SENTENCE_TOKENS[id(vocabulary)][1]


def make_filler(num_tokens: int, vocabulary: seqio.Vocabulary
                ) -> tuple[str, int]:
  """The longest filler of whole sentences with at most `num_tokens` tokens.

  Args:
    num_tokens: the token budget.
    vocabulary: the vocabulary that counts tokens.

  Returns:
    (filler text, its number of tokens).
  """
  def count(n):
    return len(vocabulary.encode(filler_text(n)))

  mean, _ = _sentence_tokens(vocabulary)
  n = max(0, int(num_tokens / mean) - 1)
  tokens = count(n)
  while n > 0 and tokens > num_tokens:
    n = max(0, n - max(1, int((tokens - num_tokens) / mean)))
    tokens = count(n)
  while True:
    more = count(n + 1)
    if more > num_tokens:
      return filler_text(n), tokens
    n, tokens = n + 1, more


def _check_range(filler_tokens: tuple[int, int]) -> None:
  low, high = filler_tokens
  if not 0 <= low <= high:
    raise ValueError(f"filler_tokens={filler_tokens}: expected 0 <= min <= "
                     "max")


def examples(split: str, *, filler_tokens: tuple[int, int], seed: int,
             num_examples: Optional[int],
             vocabulary: Optional[seqio.Vocabulary] = None
             ) -> Iterator[dict[str, str]]:
  """PassKey examples of one split.

  Args:
    split: the split name (part of each example's random seed).
    filler_tokens: (min, max) filler length in tokens, inclusive.
    seed: the base seed.
    num_examples: how many; None for an endless stream.
    vocabulary: counts tokens; defaults to the gin-selected one.

  Yields:
    {"prompt", "answer" (" {key}"), "key", "filler_tokens"} as strings.
  """
  _check_range(filler_tokens)
  vocabulary = vocabulary or vocabularies.get_vocabulary()
  low, high = filler_tokens
  _, slack = _sentence_tokens(vocabulary)
  if high - low < slack:
    raise ValueError(
        f"filler_tokens={filler_tokens}: the range must span at least {slack} "
        "tokens (one filler sentence) in this vocabulary")
  split_id = zlib.crc32(split.encode("utf-8"))
  indices = itertools.count() if num_examples is None else range(num_examples)
  for i in indices:
    rng = np.random.default_rng([seed, split_id, low, high, i])
    key = int(rng.integers(KEY_RANGE[0], KEY_RANGE[1] + 1))
    budget = int(rng.integers(low + slack, high + 1))
    filler, tokens = make_filler(budget, vocabulary)
    if not low <= tokens <= high:
      raise RuntimeError(f"filler of {tokens} tokens outside {filler_tokens}")
    yield {"prompt": prompt(key, filler), "answer": f" {key}",
           "key": str(key), "filler_tokens": str(tokens)}


def _generator(filler_tokens: tuple[int, int], seed: int,
               num_examples: Mapping[str, Optional[int]]):
  def generate(split):
    return examples(split, filler_tokens=filler_tokens, seed=seed,
                    num_examples=num_examples[split])
  return generate


def register_passkey_task(name: str, filler_tokens: tuple[int, int], *,
                          seed: int = DEFAULT_SEED,
                          num_examples: int = 100,
                          splits: Sequence[str] = ("validation", "test")
                          ) -> seqio.Task:
  """Registers a PassKey evaluation task (`inputs`/`targets` features).

  Args:
    name: the task name.
    filler_tokens: (min, max) filler tokens.
    seed: base seed of the examples.
    num_examples: examples per split.
    splits: split names.

  Returns:
    The task; its metric is `passkey_accuracy`. Prompts are never cut: one
    longer than `sequence_length["inputs"]` is an error.
  """
  _check_range(filler_tokens)
  return registration.register_long_context_task(
      name, _generator(filler_tokens, seed, {s: num_examples for s in splits}),
      inputs="prompt", targets="answer", metric="passkey_accuracy",
      keep=None, max_length=2**31 - 1, splits=splits)


def register_passkey_training_task(
    name: str, filler_tokens: tuple[int, int] = TRAIN_FILLER_TOKENS, *,
    seed: int = DEFAULT_SEED,
    num_examples: Optional[Mapping[str, Optional[int]]] = None,
    prompt_weight: float = 0.0) -> seqio.Task:
  """Registers a PassKey training task (LM `targets` and `loss_weights`).

  Args:
    name: the task name.
    filler_tokens: (min, max) filler tokens.
    seed: base seed of the examples.
    num_examples: split -> examples (None: endless); default an endless
      "train" and a 100-example "validation".
    prompt_weight: loss weight of the prompt's tokens (the answer and EOS
      weigh 1). 0 trains the answer alone; a small model trained from scratch
      learns to copy sooner with some weight on the prompt, whose key line
      repeats the key and whose filler repeats itself.

  Returns:
    The task. Each example is one row, padded to `sequence_length["targets"]`;
    an example longer than that is an error.
  """
  _check_range(filler_tokens)
  num_examples = dict(num_examples or {"train": None, "validation": 100})
  return register_lm_task(name, _generator(filler_tokens, seed, num_examples),
                          list(num_examples), prompt_weight)


def copy_drill(split: str, *, seed: int = DEFAULT_SEED,
               num_examples: Optional[int] = None) -> Iterator[dict[str, str]]:
  """Copy-drill examples: {"prompt": s + "\\n", "answer": s}, s random.

  Example `i` depends only on (seed, split name, i)."""
  split_id = zlib.crc32(split.encode("utf-8"))
  alphabet = np.array(list(COPY_DRILL_ALPHABET))
  low, high = COPY_DRILL_CHARACTERS
  indices = itertools.count() if num_examples is None else range(num_examples)
  for i in indices:
    rng = np.random.default_rng([seed, split_id, i])
    text = "".join(rng.choice(alphabet, int(rng.integers(low, high + 1))))
    yield {"prompt": text + "\n", "answer": text}


def register_lm_task(name: str, generate, splits: Sequence[str],
                     prompt_weight: float) -> seqio.Task:
  """An LM task over `generate(split)`'s {"prompt", "answer"} examples: one
  padded row each, the prompt weighted `prompt_weight`, the answer and EOS 1."""
  source = registration.make_source(generate, ["prompt", "answer"],
                                    splits=list(splits))

  def rename(dataset):
    return dataset.map(lambda ex: {"inputs": ex["prompt"],
                                   "targets": ex["answer"]})

  def check_length(dataset, sequence_length):
    return recipe.check_length(dataset, sequence_length, name)

  return seqio.TaskRegistry.add(
      name, source=source,
      output_features=recipe.lm_output_features(
          vocabularies.CONFIGURED_VOCABULARY),
      preprocessors=[rename,
                     functools.partial(recipe.to_lm_example,
                                       prompt_weight=prompt_weight),
                     check_length, recipe.pad])


def register_copy_drill_task(name: str, *, seed: int = DEFAULT_SEED,
                             prompt_weight: float = SCRATCH_PROMPT_WEIGHT
                             ) -> seqio.Task:
  """Registers the copy drill (module docstring): endless "train", 100-example
  "validation"."""
  counts = {"train": None, "validation": 100}
  return register_lm_task(
      name, lambda split: copy_drill(split, seed=seed,
                                     num_examples=counts[split]),
      list(counts), prompt_weight)


def register_all() -> None:
  """Registers the PassKey tasks listed in the module docstring."""
  register_passkey_training_task("fam_passkey_train")
  register_passkey_training_task("fam_passkey_train_short",
                                 SHORT_TRAIN_FILLER_TOKENS)
  # The two stages of benchmarks/passkey.py at CPU scale: copy, then memory.
  register_passkey_training_task("fam_passkey_train_near", NEAR_FILLER_TOKENS,
                                 prompt_weight=SCRATCH_PROMPT_WEIGHT)
  register_passkey_training_task("fam_passkey_train_far", FAR_FILLER_TOKENS,
                                 prompt_weight=SCRATCH_PROMPT_WEIGHT)
  register_copy_drill_task("fam_passkey_copy_drill")
  seqio.MixtureRegistry.add("fam_passkey_train_copy",
                            [("fam_passkey_copy_drill", 0.5),
                             ("fam_passkey_train_near", 0.5)])
  for label, length in EVAL_FILLER_LENGTHS.items():
    register_passkey_task(f"fam_passkey_{label}",
                          (length - EVAL_TOLERANCE, length))
