"""What `import fam_jax.tasks` registers, and that it needs no data."""

import subprocess
import sys

import seqio

import fam_jax.tasks  # noqa: F401  (registers the tasks)

# Each of these is read end to end in test_tasks_{passkey,flan,long_context,text}.py;
# a new registration must be added here and get such a test.
TASKS = {
    "fam_passkey_train", "fam_passkey_train_short", "fam_passkey_train_near",
    "fam_passkey_train_far", "fam_passkey_copy_drill", "fam_passkey_1k",
    "fam_passkey_4k", "fam_passkey_16k", "fam_passkey_64k", "fam_passkey_256k",
    "fam_flan_flan2021", "fam_flan_t0", "fam_flan_niv2", "fam_flan_cot",
    "fam_flan_dialog", "fam_flan_packed",
    "fam_narrativeqa", "fam_scrolls_qasper", "fam_scrolls_quality",
    "fam_xlsum", "fam_pg19", "fam_isabelle", "fam_text_classics",
}
MIXTURES = {"fam_flan_collection", "fam_passkey_train_copy"}


def test_registered_names():
  assert {n for n in seqio.TaskRegistry.names() if n.startswith("fam_")} == \
      TASKS
  assert {n for n in seqio.MixtureRegistry.names()
          if n.startswith("fam_")} == MIXTURES


def test_importing_needs_no_data_directory(tmp_path):
  env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # No FAM_*_DIR.
  code = ("import seqio, fam_jax.tasks; print(sorted(n for n in "
          "seqio.TaskRegistry.names() if n.startswith('fam_')))")
  result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, check=True)
  assert result.stdout.strip() == str(sorted(TASKS))


def test_the_core_model_does_not_import_tensorflow():
  code = ("import sys, fam_jax, fam_jax.model, fam_jax.streaming; "
          "print('tensorflow' in sys.modules, 'seqio' in sys.modules)")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, check=True)
  assert result.stdout.split() == ["False", "False"]
