"""Reusable seqio preprocessors: field checks, prompt templates, tokenization
with truncation that keeps the question.

Every preprocessor takes and returns a `tf.data.Dataset`; seqio fills in
`sequence_length` and `output_features` where a function asks for them. The
paper's training recipe (LM examples, packing, the auxiliary target) is in
`recipe.py`.

Truncation (`tokenize_prompt`): a prompt longer than its limit
(`max_length`, or the feature's sequence length if smaller) is cut, and only
the *document* is cut: a template such as
`"{document}\\n\\nQuestion: {question}\\nAnswer:"` with
`truncate_field="document"` keeps every token of the question and of the
fixed text, and drops document tokens from its end (`keep="start"`) or its
start (`keep="end"`). Without a `truncate_field` the whole prompt is cut on
one side. `keep=None` refuses to cut: a prompt that does not fit stops the
pipeline with an error naming the task.
"""

from __future__ import annotations

import string
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

KEEP_SIDES = ("start", "end")


def require_fields(dataset: tf.data.Dataset, fields: Sequence[str],
                   task_name: str) -> tf.data.Dataset:
  """Fails at once, naming the field, when examples lack one of `fields`.

  Args:
    dataset: examples (a dict per element).
    fields: the fields every example needs.
    task_name: named in the error.

  Returns:
    `dataset` unchanged.
  """
  spec = dataset.element_spec
  for k in fields:
    if k not in spec:
      raise ValueError(f"task '{task_name}': its source has no field '{k}' "
                       f"(it has {sorted(spec)})")
    if spec[k].dtype != tf.string or spec[k].shape.rank != 0:
      raise ValueError(f"task '{task_name}': field '{k}' is {spec[k]}, "
                       "expected a scalar string")
  return dataset


def require_non_empty(dataset: tf.data.Dataset, fields: Sequence[str],
                      task_name: str) -> tf.data.Dataset:
  """Stops with an error naming the task and field at an empty text field.

  Whitespace-only text counts as empty. The error is raised while iterating,
  as a `tf.errors.InvalidArgumentError` whose message names task and field
  ("task T: field F is empty in an example"; TensorFlow escapes quotes in
  such messages, so they have none).

  Args:
    dataset: examples with string `fields`.
    fields: fields that must hold text.
    task_name: named in the error.

  Returns:
    The same examples, checked.
  """
  require_fields(dataset, fields, task_name)

  def check(example):
    checks = [tf.debugging.assert_greater(
        tf.strings.length(tf.strings.strip(example[k])), 0,
        message=f"task {task_name}: field {k} is empty in an example")
              for k in fields]
    with tf.control_dependencies(checks):
      return {k: tf.identity(v) for k, v in example.items()}

  return dataset.map(check, num_parallel_calls=tf.data.AUTOTUNE)


def template_fields(template: str) -> list[str]:
  """The `{field}` names of a template, in order.

  A template without braces is a bare field name ("document" means
  "{document}"). `{{` and `}}` are literal braces.

  Args:
    template: e.g. "{document}\\n\\nQuestion: {question}".

  Returns:
    The field names.
  """
  return [f for _, f in _parts(template) if f is not None]


def _parts(template: str) -> list[tuple[str, Optional[str]]]:
  """(literal, field) pairs of a template; field None for trailing text."""
  if "{" not in template and "}" not in template:
    return [("", template)]
  parts = []
  for literal, field, spec, conversion in string.Formatter().parse(template):
    if field is not None and (not field or spec or conversion):
      raise ValueError(f"template {template!r}: only named fields like "
                       "{document} are supported")
    parts.append((literal, field))
  return parts


def _join(parts: Sequence[tuple[str, Optional[str]]], example) -> tf.Tensor:
  pieces = []
  for literal, field in parts:
    if literal:
      pieces.append(tf.constant(literal))
    if field is not None:
      pieces.append(example[field])
  return tf.strings.join(pieces) if pieces else tf.constant("")


def render(template: str, example) -> tf.Tensor:
  """The template filled in with the example's string fields (a tf.string)."""
  return _join(_parts(template), example)


def apply_templates(dataset: tf.data.Dataset,
                    templates: Mapping[str, str],
                    task_name: str) -> tf.data.Dataset:
  """Builds text features from templates, e.g. {"inputs": "{doc}\\n\\n{q}"}.

  Args:
    dataset: examples with the templates' string fields.
    templates: output feature -> template.
    task_name: named in errors.

  Returns:
    Examples holding only the templated features.
  """
  needed = sorted({f for t in templates.values() for f in template_fields(t)})
  require_fields(dataset, needed, task_name)
  return dataset.map(
      lambda ex: {k: render(t, ex) for k, t in templates.items()},
      num_parallel_calls=tf.data.AUTOTUNE)


def token_limit(feature: str, max_length: int,
                sequence_length: Optional[Mapping[str, int]],
                output_features: Mapping[str, seqio.Feature]) -> int:
  """Tokens a feature may hold before its EOS.

  Args:
    feature: the output feature.
    max_length: the task's own limit.
    sequence_length: seqio's lengths; the feature's, if given, also limits.
    output_features: tells whether an EOS follows.

  Returns:
    min(max_length, sequence_length[feature]) less one if an EOS is added.
  """
  limit = max_length
  if sequence_length and sequence_length.get(feature):
    limit = min(limit, sequence_length[feature])
  if output_features[feature].add_eos:
    limit -= 1
  if limit <= 0:
    raise ValueError(f"'{feature}' leaves no room for tokens: max_length="
                     f"{max_length}, sequence_length={sequence_length}")
  return limit


def _cut(tokens: tf.Tensor, limit, keep: str) -> tf.Tensor:
  if keep == "start":
    return tokens[:limit]
  return tokens[tf.maximum(tf.size(tokens) - limit, 0):]


def tokenize_prompt(dataset: tf.data.Dataset,
                    sequence_length: Optional[Mapping[str, int]],
                    output_features: Mapping[str, seqio.Feature],
                    *,
                    feature: str,
                    template: str,
                    max_length: int,
                    keep: Optional[str],
                    truncate_field: Optional[str],
                    task_name: str) -> tf.data.Dataset:
  """Renders `template` into token feature `feature`, cut to fit.

  Also stores the rendered text, before any cut, as `<feature>_pretokenized`.
  With `truncate_field`, the text before and after that field is tokenized
  apart from it, so token boundaries there may differ slightly from
  tokenizing the whole prompt at once (never for the byte vocabulary).

  Args:
    dataset: examples with the template's string fields.
    sequence_length: seqio's lengths.
    output_features: the task's features (vocabulary, EOS).
    feature: the token feature to write, e.g. "inputs".
    template: the prompt template.
    max_length: the task's limit in tokens (before the EOS, if any).
    keep: "start" or "end" (which part of the cut text survives), or None to
      refuse to cut (an error names the task instead).
    truncate_field: the one template field that is cut, or None for the whole
      prompt.
    task_name: named in errors.

  Returns:
    The examples with `feature` (int32 ids) and `<feature>_pretokenized`.
  """
  if keep is not None and keep not in KEEP_SIDES:
    raise ValueError(f"task '{task_name}': keep={keep!r}, expected one of "
                     f"{KEEP_SIDES} or None")
  parts = _parts(template)
  fields = [f for _, f in parts if f is not None]
  require_fields(dataset, fields, task_name)
  vocab = output_features[feature].vocabulary
  limit = token_limit(feature, max_length, sequence_length, output_features)

  def encode(text):
    return tf.cast(vocab.encode_tf(text), tf.int32)

  if truncate_field is None or keep is None:
    def tokenize(ex):
      text = _join(parts, ex)
      ids = encode(text)
      if keep is None:
        with tf.control_dependencies([tf.debugging.assert_less_equal(
            tf.size(ids), limit,
            message=f"task {task_name}: an {feature} prompt is longer than "
                    f"{limit} tokens and this task does not truncate")]):
          ids = tf.identity(ids)
      else:
        ids = _cut(ids, limit, keep)
      return {**ex, feature: ids, f"{feature}_pretokenized": text}
    return dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)

  if fields.count(truncate_field) != 1:
    raise ValueError(f"task '{task_name}': truncate_field '{truncate_field}' "
                     f"must appear exactly once in the template {template!r}")
  at = next(i for i, (_, f) in enumerate(parts) if f == truncate_field)
  before = parts[:at] + [(parts[at][0], None)]
  after = parts[at + 1:]

  def tokenize_around(ex):
    before_ids = encode(_join(before, ex))
    after_ids = encode(_join(after, ex))
    budget = limit - tf.size(before_ids) - tf.size(after_ids)
    with tf.control_dependencies([tf.debugging.assert_positive(
        budget,
        message=f"task {task_name}: the {feature} prompt leaves no room "
                f"for {truncate_field} within {limit} tokens")]):
      field_ids = _cut(encode(ex[truncate_field]), budget, keep)
    return {**ex,
            feature: tf.concat([before_ids, field_ids, after_ids], 0),
            f"{feature}_pretokenized": _join(parts, ex)}

  return dataset.map(tokenize_around, num_parallel_calls=tf.data.AUTOTUNE)


def select(dataset: tf.data.Dataset, features: Sequence[str]
           ) -> tf.data.Dataset:
  """Keeps only `features` of each example."""
  return dataset.map(lambda ex: {k: ex[k] for k in features},
                     num_parallel_calls=tf.data.AUTOTUNE)
