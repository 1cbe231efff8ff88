"""The Flan Collection instruction mixture, packed as in the paper.

Data: the Flan Collection's released sub-mixture exports (Hugging Face
datasets `DataProvenanceInitiative/<name>_submix_original`, linked from the
google-research/FLAN `flan/v2/README.md`). Each row has the string fields
`inputs`, `targets`, `task_source`, `task_name` and `template_type`; only
`inputs` and `targets` are read. Put each export in its own folder under the
Flan directory (env `FAM_FLAN_DIR` or gin
`local_data_dir.directories = {"flan": ...}`):

    $FAM_FLAN_DIR/flan2021_submix_original/**/*.parquet   (or *.jsonl)
    $FAM_FLAN_DIR/t0_submix_original/...
    $FAM_FLAN_DIR/niv2_submix_original/...
    $FAM_FLAN_DIR/cot_submix_original/...
    $FAM_FLAN_DIR/dialog_submix_original/...

e.g. `huggingface-cli download --repo-type dataset
DataProvenanceInitiative/cot_submix_original --local-dir
$FAM_FLAN_DIR/cot_submix_original`. Parquet shards and JSON Lines files with
the same fields are both read. The exports have a single "train" split.

Registered:
- `fam_flan_<sub>` for sub in flan2021, t0, niv2, cot, dialog: one LM example
  per row, `targets` = ids(inputs + "\\n") + ids(targets) + EOS [choice: the
  newline separating prompt and answer], `loss_weights` 0 on the prompt, 1 on
  the answer and EOS; not packed, not padded.
- `fam_flan_collection`: the mixture of the five at the published rates, per
  example.
- `fam_flan_packed`: the paper's training rows: examples drawn from
  `fam_flan_collection` (so the rates hold per example, as published),
  packed greedily to `sequence_length["targets"]` (8.5k in the paper) with
  room left for the auxiliary `[repeat random segment]:` target (256 tokens,
  loss weight 0.1; gin `auxiliary_target`), then padded. Endless.
"""

from __future__ import annotations

from typing import Optional

import seqio
import tensorflow as tf

from fam_jax.tasks import preprocessors
from fam_jax.tasks import recipe
from fam_jax.tasks import sources
from fam_jax.tasks import vocabularies

# Mixing rates of the Flan 2022 collection: flan2021 40%, t0 32%, niv2 20%,
# cot 5%, dialog 3%. Source: google-research/FLAN, flan/v2/run_example.py
# (mixture "flan2022_submix", which the flan/v2 README points to for "the
# mixture rates"); Longpre et al. 2023, "The Flan Collection", arXiv:2301.13688.
SUBMIXTURE_RATES = {
    "flan2021": 0.4,
    "t0": 0.32,
    "niv2": 0.2,
    "cot": 0.05,
    "dialog": 0.03,
}
FIELDS = ("inputs", "targets")
PROMPT_SEPARATOR = "\n"
MIXTURE_NAME = "fam_flan_collection"
PACKED_TASK_NAME = "fam_flan_packed"


def export_folder(submixture: str) -> str:
  """The folder, under the Flan directory, of a sub-mixture's export."""
  return f"{submixture}_submix_original"


def source(submixture: str) -> sources.FileSource:
  """The Parquet / JSON Lines files of one sub-mixture export ("train")."""
  folder = export_folder(submixture)
  return sources.FileSource(
      {"train": (f"{folder}/**/*.parquet", f"{folder}/**/*.jsonl")},
      FIELDS, root=lambda: sources.local_data_dir("flan"))


def register_submixture_task(submixture: str) -> seqio.Task:
  """Registers `fam_flan_<submixture>`: one LM example per row."""
  name = f"fam_flan_{submixture}"

  def check(dataset):
    return preprocessors.require_non_empty(dataset, FIELDS, name)

  def template(dataset):
    return preprocessors.apply_templates(
        dataset, {"inputs": "{inputs}" + PROMPT_SEPARATOR,
                  "targets": "{targets}"}, name)

  return seqio.TaskRegistry.add(
      name, source=source(submixture),
      output_features=recipe.lm_output_features(
          vocabularies.CONFIGURED_VOCABULARY),
      preprocessors=[check, template, recipe.to_lm_example])


class MixtureSource(seqio.DataSource):
  """Examples of a registered mixture (or task), as a data source.

  Lets a task apply preprocessors after mixing: the mixture is read endlessly,
  without sequence lengths (no trimming), with the shard and seed it is given.
  The mixture shuffles its examples, so the task need not shuffle again.
  """

  def __init__(self, mixture_name: str, splits=("train",)):
    self._name = mixture_name
    super().__init__(splits=splits, performs_internal_shuffling=True)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> list[str]:
    return [split]

  def __repr__(self):
    return f"MixtureSource({self._name})"

  def get_dataset(self, split: str = "train", shuffle: bool = True,
                  seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None,
                  **unused_kwargs) -> tf.data.Dataset:
    return seqio.get_mixture_or_task(self._name).get_dataset(
        sequence_length=None, split=split, shuffle=shuffle, seed=seed,
        shard_info=shard_info, num_epochs=None, trim_output_features=False,
        try_in_mem_cache=False)


def register_all() -> None:
  """Registers the Flan tasks and mixture listed in the module docstring."""
  for submixture in SUBMIXTURE_RATES:
    register_submixture_task(submixture)
  seqio.MixtureRegistry.add(
      MIXTURE_NAME,
      [(f"fam_flan_{s}", rate) for s, rate in SUBMIXTURE_RATES.items()])
  seqio.TaskRegistry.add(
      PACKED_TASK_NAME, source=MixtureSource(MIXTURE_NAME),
      output_features=recipe.lm_output_features(
          vocabularies.CONFIGURED_VOCABULARY),
      preprocessors=recipe.packed_recipe(),
      # Rows are made of shuffled examples; a buffer of 8.5k-token rows would
      # only cost memory and start-up time.
      shuffle_buffer_size=None)
