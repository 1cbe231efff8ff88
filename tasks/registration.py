"""`register_long_context_task`: one call registers a long-context task.

Two kinds of task come out of it:
- generation (`inputs` given): features `inputs` (the prompt, no EOS) and
  `targets` (the answer + EOS), with `inputs_pretokenized` /
  `targets_pretokenized` text; a model generates from `inputs` and the metric
  compares its decoded output with the target text.
- language modelling (`inputs=None`): the feature `targets` holds the text's
  tokens (no EOS); the metric is next-token accuracy, computed from the
  model's teacher-forced predictions
  (see `metrics.next_token_accuracy_with_aux`).

Truncation: a text longer than `min(max_length, sequence_length)` tokens is
cut as `preprocessors.tokenize_prompt` documents: only `truncate_field` (e.g.
the document) if one is named, else the whole prompt, keeping its `keep` side
("end" by default, so a question at the end survives). Empty text fields stop
the pipeline with an error naming the task and field.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import seqio
import tensorflow as tf

from fam_jax.tasks import metrics as metrics_lib
from fam_jax.tasks import preprocessors
from fam_jax.tasks import sources
from fam_jax.tasks import vocabularies

MAX_LENGTH = 262144  # 256k tokens: the paper's limit for long inputs.

Source = Union[seqio.DataSource, str, Mapping[str, Union[str, Sequence[str]]],
               Callable[..., Iterable[Mapping[str, Any]]]]
Metric = Union[str, Callable[..., Mapping[str, float]]]


def make_source(source: Source, fields: Sequence[str],
                splits: Optional[Sequence[str]] = None,
                local_dir: Optional[str] = None) -> seqio.DataSource:
  """A seqio data source from any of the forms `register_long_context_task`
  accepts.

  Args:
    source: a `seqio.DataSource` (used as is); a TFDS name with its version,
      such as "scrolls/qasper:1.0.0" (read with `seqio.TfdsDataSource`); a
      mapping split -> file glob(s) (JSON Lines, Parquet
      or text, see `sources.FileSource`); or a function `fn(split)` yielding
      dicts of strings (`sources.GeneratorSource`).
    fields: the string fields the task reads.
    splits: the splits of a TFDS or generator source.
    local_dir: for file globs: relative globs are taken under
      `sources.local_data_dir(local_dir)`, resolved when data is read.

  Returns:
    The data source.
  """
  if isinstance(source, seqio.DataSource):
    return source
  if isinstance(source, str):
    if not splits:
      raise ValueError(f"TFDS source '{source}' needs explicit `splits`")
    return seqio.TfdsDataSource(tfds_name=source, splits=list(splits))
  if isinstance(source, Mapping):
    root = None
    if local_dir is not None:
      def root():
        return sources.local_data_dir(local_dir)
    return sources.FileSource(source, fields, root=root)
  if callable(source):
    if not splits:
      raise ValueError("a generator source needs explicit `splits`")
    return sources.GeneratorSource(source, splits, fields)
  raise TypeError(f"unsupported source {source!r}: expected a seqio "
                  "DataSource, a TFDS name, {split: glob} or a function")


def _metric_fns(metric: Union[Metric, Sequence[Metric]]) -> list[Callable]:
  metric_list = [metric] if isinstance(metric, str) or callable(metric) \
      else list(metric)
  fns = []
  for m in metric_list:
    if isinstance(m, str):
      if m not in metrics_lib.METRICS:
        raise ValueError(f"unknown metric '{m}'; known: "
                         f"{sorted(metrics_lib.METRICS)}")
      m = metrics_lib.METRICS[m]
    fns.append(m)
  return fns


def register_long_context_task(
    name: str,
    source: Source,
    *,
    targets: str,
    metric: Union[Metric, Sequence[Metric]],
    inputs: Optional[str] = None,
    max_length: int = MAX_LENGTH,
    keep: Optional[str] = "end",
    truncate_field: Optional[str] = None,
    splits: Optional[Sequence[str]] = None,
    local_dir: Optional[str] = None,
    vocabulary: Optional[seqio.Vocabulary] = None,
) -> seqio.Task:
  """Registers a seqio task that reads `source` and scores with `metric`.

  Args:
    name: the task name.
    source: see `make_source`: a DataSource, a TFDS name, {split: glob(s)},
      or a generator function `fn(split)`.
    targets: template of the answer text (generation) or of the text to
      score (language modelling), e.g. "{summary}" or just "summary".
    metric: a name in `metrics.METRICS` ("rouge_l", "accuracy",
      "passkey_accuracy", "next_token_accuracy") or a seqio metric function,
      or a list of them.
    inputs: template of the prompt, e.g.
      "{document}\\n\\nQuestion: {question}\\nAnswer:"; None for a language
      modelling task.
    max_length: the longest prompt (or scored text) in tokens; with
      `sequence_length` given to `get_dataset`, the smaller limit applies.
    keep: which part of an over-long text survives: "end" (the default: its
      start is cut, so a question at the end of the prompt survives) or
      "start"; None makes an over-long text an error instead.
    truncate_field: the template field that is cut (e.g. "document"), so
      the rest of the prompt survives whole; None cuts the whole text.
    splits: the splits of a TFDS or generator source.
    local_dir: data set name whose directory (`FAM_<NAME>_DIR` or gin
      `local_data_dir.directories`) holds relative file globs.
    vocabulary: defaults to the gin-selected
      `vocabularies.CONFIGURED_VOCABULARY`.

  Returns:
    The registered `seqio.Task`.
  """
  vocabulary = vocabulary or vocabularies.CONFIGURED_VOCABULARY
  templates = {"targets": targets}
  if inputs is not None:
    templates["inputs"] = inputs
  fields = sorted({f for t in templates.values()
                   for f in preprocessors.template_fields(t)})
  if truncate_field is not None and truncate_field not in fields:
    raise ValueError(f"task '{name}': truncate_field '{truncate_field}' is "
                     f"not a field of its templates {templates}")
  data_source = make_source(source, fields, splits, local_dir)

  def check(dataset):
    return preprocessors.require_non_empty(dataset, fields, name)

  if inputs is None:
    def tokenize(dataset, sequence_length, output_features):
      return preprocessors.tokenize_prompt(
          dataset, sequence_length, output_features, feature="targets",
          template=targets, max_length=max_length, keep=keep,
          truncate_field=truncate_field, task_name=name)

    def finish(dataset):
      return preprocessors.select(dataset, ["targets"])

    return seqio.TaskRegistry.add(
        name, source=data_source,
        output_features={
            "targets": seqio.Feature(vocabulary, add_eos=False)},
        preprocessors=[check, tokenize, finish],
        postprocess_fn=metrics_lib.target_token_ids,
        metric_fns=_metric_fns(metric))

  if (truncate_field is not None
      and truncate_field not in preprocessors.template_fields(inputs)):
    raise ValueError(f"task '{name}': truncate_field '{truncate_field}' is "
                     f"not a field of the inputs template {inputs!r}")

  def tokenize_inputs(dataset, sequence_length, output_features):
    return preprocessors.tokenize_prompt(
        dataset, sequence_length, output_features, feature="inputs",
        template=inputs, max_length=max_length, keep=keep,
        truncate_field=truncate_field, task_name=name)

  def tokenize_targets(dataset, output_features):
    vocab = output_features["targets"].vocabulary

    def encode(ex):
      text = preprocessors.render(targets, ex)
      return {**ex, "targets": tf.cast(vocab.encode_tf(text), tf.int32),
              "targets_pretokenized": text}

    return dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE)

  def finish(dataset):
    return preprocessors.select(dataset, [
        "inputs", "targets", "inputs_pretokenized", "targets_pretokenized"])

  return seqio.TaskRegistry.add(
      name, source=data_source,
      output_features={
          "inputs": seqio.Feature(vocabulary, add_eos=False),
          "targets": seqio.Feature(vocabulary, add_eos=True)},
      preprocessors=[check, tokenize_inputs, tokenize_targets, finish,
                     seqio.preprocessors.append_eos_after_trim],
      metric_fns=_metric_fns(metric))
