"""The paper's long-context evaluation tasks (PAPER.md, Table 10).

| task | source | metric |
|---|---|---|
| `fam_narrativeqa` | TFDS `scrolls/narrative_qa:1.0.0` | ROUGE-L |
| `fam_scrolls_qasper` | TFDS `scrolls/qasper:1.0.0` | ROUGE-L |
| `fam_scrolls_quality` | TFDS `scrolls/quality:1.0.0` | accuracy |
| `fam_xlsum` | XL-Sum JSON Lines files | ROUGE-L |
| `fam_pg19` | TFDS `pg19:0.1.1` | next-token accuracy |
| `fam_isabelle` | Isabelle theory files | next-token accuracy |

All cut long texts to `MAX_LENGTH` = 256k tokens (or the sequence length if
smaller), as the paper does.

- SCROLLS (`input`, `output` fields): SCROLLS writes the query (QuALITY: the
  question and its options) *before* the document in `input`. The prompt is
  `"{input}\\n\\nAnswer:"`; a long `input` loses the end of its document, so
  the query and the closing "Answer:" survive [choice]. Only the "train" and
  "validation" splits: SCROLLS' test outputs are empty. Each row is scored on
  its own; SCROLLS' official scorer takes the best over rows sharing an `id`.
  TFDS prepares the data on first use (`seqio.TfdsDataSource`).
- XL-Sum: the released `<language>_{train,val,test}.jsonl` files (fields
  `id`, `url`, `title`, `summary`, `text`) in env `FAM_XLSUM_DIR`; English
  [choice: the paper does not say which language]. Prompt
  `"Article: {text}\\n\\nOne-sentence summary:"` [choice], the article loses
  its end if too long.
- PG-19 (`book_text`) and Isabelle: language modelling, the first 256k tokens
  of each text [choice]. Isabelle has no public split: put theory files
  (`*.thy`) in `$FAM_ISABELLE_DIR/{train,validation,test}/` (any depth); each
  file is one example.
"""

from __future__ import annotations

from fam_jax.tasks import registration

MAX_LENGTH = registration.MAX_LENGTH
SCROLLS_PROMPT = "{input}\n\nAnswer:"
SCROLLS_SPLITS = ("train", "validation")
XLSUM_LANGUAGE = "english"
XLSUM_PROMPT = "Article: {text}\n\nOne-sentence summary:"
ISABELLE_SPLITS = ("train", "validation", "test")

SCROLLS_TASKS = {  # task name: (TFDS name, metric)
    "fam_narrativeqa": ("scrolls/narrative_qa:1.0.0", "rouge_l"),
    "fam_scrolls_qasper": ("scrolls/qasper:1.0.0", "rouge_l"),
    "fam_scrolls_quality": ("scrolls/quality:1.0.0", "accuracy"),
}


def register_all() -> None:
  """Registers the six tasks of the table in the module docstring."""
  for name, (tfds_name, metric) in SCROLLS_TASKS.items():
    registration.register_long_context_task(
        name, tfds_name, inputs=SCROLLS_PROMPT, targets="output",
        metric=metric, max_length=MAX_LENGTH, keep="start",
        truncate_field="input", splits=SCROLLS_SPLITS)

  registration.register_long_context_task(
      "fam_xlsum",
      {"train": f"{XLSUM_LANGUAGE}_train.jsonl",
       "validation": f"{XLSUM_LANGUAGE}_val.jsonl",
       "test": f"{XLSUM_LANGUAGE}_test.jsonl"},
      local_dir="xlsum", inputs=XLSUM_PROMPT, targets="summary",
      metric="rouge_l", max_length=MAX_LENGTH, keep="start",
      truncate_field="text")

  registration.register_long_context_task(
      "fam_pg19", "pg19:0.1.1", targets="book_text",
      metric="next_token_accuracy", max_length=MAX_LENGTH, keep="start",
      splits=("train", "validation", "test"))

  registration.register_long_context_task(
      "fam_isabelle", {s: f"{s}/**/*.thy" for s in ISABELLE_SPLITS},
      local_dir="isabelle", targets="text", metric="next_token_accuracy",
      max_length=MAX_LENGTH, keep="start")
