"""Metrics of the paper's evaluations, against hand-computed cases and the
rouge-score package."""

import numpy as np
import pytest
from rouge_score import rouge_scorer

from fam_jax.tasks import metrics

PAIRS = [  # (reference, prediction)
    ("The cat sat on the mat.", "the cat was on the mat"),
    ("A quick brown fox jumps over the lazy dog", "quick fox lazy dog jumps"),
    ("Paris is the capital of France.", "The capital of France is Paris!"),
    ("Running runners ran; they were running.", "The runner runs and ran."),
    ("COVID-19 cases rose 12% in 2021", "covid 19 cases rose by 12 in 2021"),
    ("Übermäßig schöne Straße", "strasse schone"),  # Non-ASCII: dropped.
    ("no overlap at all", "entirely different words"),
    ("", "something"),
    ("only punctuation?", "!!!"),
]


def test_rouge_l_hand_computed():
  # reference: the cat sat on the mat (6 tokens); prediction: the cat was on
  # the mat (6). LCS "the cat on the mat" = 5: P = R = F = 5/6.
  result = metrics.rouge_l(["The cat sat on the mat."],
                           ["the cat was on the mat"])
  assert result["rouge_l"] == pytest.approx(100 * 5 / 6)
  # LCS 2 ("a b") of 4 reference / 2 prediction tokens: P 1, R 0.5, F 2/3.
  assert metrics.rouge_l_fmeasure("a b c d", "a b") == pytest.approx(2 / 3)


@pytest.mark.parametrize("use_stemmer", [False, True])
def test_rouge_l_matches_rouge_score_package(use_stemmer):
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
  for reference, prediction in PAIRS:
    expected = scorer.score(reference, prediction)["rougeL"].fmeasure
    assert metrics.rouge_l_fmeasure(reference, prediction, use_stemmer) == \
        pytest.approx(expected, abs=1e-12), (reference, prediction)
  expected_mean = np.mean([scorer.score(r, p)["rougeL"].fmeasure
                           for r, p in PAIRS])
  result = metrics.rouge_l([r for r, _ in PAIRS], [p for _, p in PAIRS],
                           use_stemmer)
  assert result["rouge_l"] == pytest.approx(100 * expected_mean)


def test_rouge_l_takes_the_best_reference():
  scorer = rouge_scorer.RougeScorer(["rougeL"])
  references = ["the red door", "a crimson door"]
  prediction = "it was a crimson door"
  best = max(scorer.score(r, prediction)["rougeL"].fmeasure
             for r in references)
  assert metrics.rouge_l([references], [prediction])["rouge_l"] == \
      pytest.approx(100 * best)


def test_accuracy_exact_match_after_whitespace():
  targets = ["No, he worked in the spaceport.", "yes", "B", ["x", "y"]]
  predictions = ["No,  he worked in\nthe spaceport. ", "Yes", "B", "y"]
  # Case matters ("Yes" != "yes"); whitespace runs do not.
  assert metrics.accuracy(targets, predictions) == {"accuracy": 75.0}


def test_next_token_accuracy_counts_tokens_not_examples():
  targets = [[5, 6, 7, 8], [1, 2]]
  predictions = [[5, 0, 7, 8], [0, 0]]
  # 3 of 4 + 0 of 2 = 3 of 6 tokens.
  assert metrics.next_token_accuracy(targets, predictions) == \
      {"next_token_accuracy": 50.0}
  with pytest.raises(ValueError, match="example 1: 2 target tokens but 3"):
    metrics.next_token_accuracy(targets, [[5, 6, 7, 8], [1, 2, 3]])


def test_next_token_accuracy_reads_teacher_forced_predictions_from_aux():
  aux = {metrics.NEXT_TOKEN_PREDICTIONS: [np.array([3, 4, 9])]}
  result = metrics.next_token_accuracy_with_aux([[3, 4, 5]], ["ignored"], aux)
  assert result["next_token_accuracy"] == pytest.approx(200 / 3)
  with pytest.raises(ValueError, match="next_token_predictions"):
    metrics.next_token_accuracy_with_aux([[3]], ["x"], {})


@pytest.mark.parametrize("prediction,hit", [
    (" 31415", True),
    ("31415. Remember it.", True),
    (" 31415 is the pass key, not 27182", True),
    ("The pass key is 31415", True),
    ("27182 or maybe 31415", False),   # The first integer counts.
    ("314159", False),                 # Digits run on: a different integer.
    ("3141.5", False),
    ("No idea.", False),
    ("", False),
])
def test_passkey_accuracy_scores_the_first_integer(prediction, hit):
  result = metrics.passkey_accuracy([" 31415"], [prediction])
  assert result == {"passkey_accuracy": 100.0 if hit else 0.0}


def test_passkey_target_without_integer_is_an_error():
  with pytest.raises(ValueError, match="holds no integer"):
    metrics.passkey_accuracy(["none"], ["1"])


def test_metric_signatures_are_what_seqio_dispatches_on():
  import inspect  # pylint: disable=g-import-not-at-top

  def positional(fn):
    return tuple(k for k, p in inspect.signature(fn).parameters.items()
                 if p.default is inspect.Parameter.empty)

  assert positional(metrics.METRICS["rouge_l"]) == ("targets", "predictions")
  assert positional(metrics.METRICS["next_token_accuracy"]) == (
      "targets", "predictions", "aux_values")
