"""Metrics of the paper's evaluations, as seqio metric functions.

Each returns {name: value} with value in percent (0-100), averaged over the
examples (next-token accuracy: over all tokens):
- `rouge_l`: ROUGE-L F-measure (longest common subsequence), computed by
  Google's rouge-score package (tokens: lowercase ASCII letters and digits);
  optional Porter stemming (the paper's tasks use none [choice]). NarrativeQA,
  Qasper, XLSum.
- `accuracy`: exact match after collapsing whitespace. QuALITY.
- `next_token_accuracy`: share of tokens the model predicts right given all the
  tokens before them (teacher forcing). PG-19, Isabelle.
- `passkey_accuracy`: the first integer in the prediction equals the key.

A target may be a list of references: ROUGE-L and accuracy take the best.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
from rouge_score import rouge_scorer

# The aux_values key under which a model hands its teacher-forced per-token
# predictions (argmax ids, one array per example, aligned with `targets`) to
# `next_token_accuracy_with_aux`.
NEXT_TOKEN_PREDICTIONS = "next_token_predictions"

Target = Union[str, Sequence[str]]

_INTEGER = re.compile(r"[0-9]+")


@functools.lru_cache(maxsize=None)
def _rouge_l_scorer(use_stemmer: bool) -> rouge_scorer.RougeScorer:
  return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l_fmeasure(target: str, prediction: str,
                     use_stemmer: bool = False) -> float:
  """ROUGE-L F1 of one prediction against one reference, in [0, 1]."""
  score = _rouge_l_scorer(bool(use_stemmer)).score(target, prediction)
  return score["rougeL"].fmeasure


def _references(target: Target) -> Sequence[str]:
  return [target] if isinstance(target, str) else list(target)


def _check_pairs(targets, predictions) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} "
                     "predictions")


def _mean_percent(values: Sequence[float]) -> float:
  return 100.0 * float(np.mean(values)) if len(values) else 0.0


def rouge_l(targets: Sequence[Target], predictions: Sequence[str],
            use_stemmer: bool = False) -> dict[str, float]:
  """Mean ROUGE-L F-measure (best reference per example), in percent."""
  _check_pairs(targets, predictions)
  return {"rouge_l": _mean_percent([
      max(rouge_l_fmeasure(r, p, use_stemmer) for r in _references(t))
      for t, p in zip(targets, predictions)])}


def _normalize(text: str) -> str:
  return " ".join(text.split())


def accuracy(targets: Sequence[Target], predictions: Sequence[str]
             ) -> dict[str, float]:
  """Exact match after collapsing whitespace (any reference), in percent."""
  _check_pairs(targets, predictions)
  return {"accuracy": _mean_percent([
      any(_normalize(r) == _normalize(p) for r in _references(t))
      for t, p in zip(targets, predictions)])}


def next_token_accuracy(targets: Sequence[Sequence[int]],
                        predictions: Sequence[Sequence[int]]
                        ) -> dict[str, float]:
  """Share of target tokens equal to the teacher-forced prediction, in percent.

  Args:
    targets: token ids per example.
    predictions: per example, the model's argmax prediction for each target
      position given all the tokens before it; same lengths as `targets`.

  Returns:
    {"next_token_accuracy": correct tokens / all tokens * 100}.
  """
  _check_pairs(targets, predictions)
  correct = total = 0
  for i, (t, p) in enumerate(zip(targets, predictions)):
    t, p = np.asarray(t), np.asarray(p)
    if t.shape != p.shape:
      raise ValueError(f"example {i}: {t.shape[0]} target tokens but "
                       f"{p.shape[0]} predicted tokens")
    correct += int(np.sum(t == p))
    total += t.size
  return {"next_token_accuracy": 100.0 * correct / total if total else 0.0}


def next_token_accuracy_with_aux(targets: Sequence[Sequence[int]],
                                 predictions: Sequence[Any],
                                 aux_values: Mapping[str, Sequence[Any]]
                                 ) -> dict[str, float]:
  """`next_token_accuracy` in seqio's (targets, predictions, aux_values) form.

  The model supplies its teacher-forced predictions as
  `aux_values[NEXT_TOKEN_PREDICTIONS]`; `targets` are token ids (the tasks'
  postprocessor returns the example's `targets` feature).
  """
  del predictions  # Free-running generations say nothing about this metric.
  if NEXT_TOKEN_PREDICTIONS not in aux_values:
    raise ValueError(f"next-token accuracy needs aux_values"
                     f"['{NEXT_TOKEN_PREDICTIONS}'] (teacher-forced argmax ids "
                     f"per example); got keys {sorted(aux_values)}")
  return next_token_accuracy(targets, aux_values[NEXT_TOKEN_PREDICTIONS])


def target_token_ids(output, example=None, is_target=False):
  """seqio postprocessor: a target becomes the example's `targets` token ids."""
  if is_target:
    return [int(i) for i in example["targets"]]
  return output


def first_integer(text: str) -> Optional[int]:
  """The first run of digits in `text` as an int (None if there is none)."""
  match = _INTEGER.search(text)
  return int(match.group()) if match else None


def passkey_accuracy(targets: Sequence[str], predictions: Sequence[str]
                     ) -> dict[str, float]:
  """The first integer of each prediction equals the key, in percent."""
  _check_pairs(targets, predictions)
  hits = []
  for t, p in zip(targets, predictions):
    key = first_integer(t)
    if key is None:
      raise ValueError(f"passkey target {t!r} holds no integer")
    hits.append(first_integer(p) == key)
  return {"passkey_accuracy": _mean_percent(hits)}


METRICS = {
    "rouge_l": rouge_l,
    "accuracy": accuracy,
    "next_token_accuracy": next_token_accuracy_with_aux,
    "passkey_accuracy": passkey_accuracy,
}
