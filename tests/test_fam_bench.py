"""benchmarks/fam_bench.py (fam-bench) end to end on a tiny budget: its tables,
JSON and plots, the FAM/BSWA ratios it prints, and XLA's memory plans it reads.
No speed is asserted."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import fam_bench  # noqa: E402  pylint: disable=g-import-not-at-top

TINY = "num_layers=1,d_model=32,num_heads=2,mlp_dim=64,block_size=32,fam_length=4"


def _table_rows(path):
  with open(path) as f:
    return [line.strip("|").split("|") for line in f.read().splitlines()
            if line.startswith("| ") and not line.startswith("| tokens")
            and not line.startswith("| context")]


def test_train_rows_plot_and_memory(tmp_path):
  fam_bench.main(["train", "--out", str(tmp_path), "--set", TINY,
                  "--lengths", "64,512", "--attention", "full,bswa",
                  "--repeats", "2"])
  rows = json.load(open(tmp_path / "train.json"))
  assert sorted((r["attention"], r["length"]) for r in rows) == [
      ("bswa", 64), ("bswa", 512), ("full", 64), ("full", 512)]
  assert os.path.getsize(tmp_path / "train.png") > 10_000
  by = {(r["attention"], r["length"]): r for r in rows}
  for r in rows:
    assert len(r["times"]) == 2 and r["seconds"] > 0
    assert r["us_per_token"] == pytest.approx(1e6 * r["seconds"] / r["length"])
    # System CPU time of the same steps: each core can spend up to the wall
    # time in it, none a negative amount.
    assert 0 <= r["system_us_per_token"] < os.cpu_count() * r["us_per_token"]
  # Full attention's plan holds [T, T] scores: 8x the tokens grows it more
  # than BSWA's, whose windows grow linearly.
  growth = {k: by[k, 512]["memory_mib"] / by[k, 64]["memory_mib"]
            for k in ("full", "bswa")}
  assert growth["full"] > 1.5 * growth["bswa"], growth


def test_train_fam_bswa_column_and_full_max(tmp_path, monkeypatch):
  """The FAM/BSWA column is the ratio of the medians; `full` is left out
  above --full-max. The table's logic alone: steps are neither built nor
  timed (the test above runs real ones), their times are given."""
  built = []
  monkeypatch.setattr(fam_bench.train_step, "build", lambda model, kind, length,
                      *args: built.append((kind, length)) or {"memory": 2**20})
  times = {"bswa": [0.4, 0.1, 0.2], "fam": [0.3, 0.9, 0.25]}
  monkeypatch.setattr(fam_bench.train_step, "time_interleaved",
                      lambda runs, repeats: {k: times[k] for k in runs})
  fam_bench.main(["train", "--out", str(tmp_path), "--set", TINY,
                  "--lengths", "64", "--attention", "full,bswa,fam",
                  "--full-max", "32", "--repeats", "3"])
  assert built == [("bswa", 64), ("fam", 64)]
  by = {r["attention"]: r for r in json.load(open(tmp_path / "train.json"))}
  assert by["bswa"]["seconds"] == 0.2 and by["fam"]["seconds"] == 0.3
  bswa, fam = _table_rows(tmp_path / "train.md")
  assert bswa[1].strip() == "bswa" and bswa[5].strip() == ""
  assert fam[1].strip() == "fam" and fam[5].strip() == "1.500"
  assert fam[6].strip() == ""  # no system time where no step was timed


def test_decode_rows_and_plot(tmp_path):
  fam_bench.main(["decode", "--out", str(tmp_path), "--lengths", "100,300",
                  "--decode-tokens", "4", "--repeats", "1"])
  rows = json.load(open(tmp_path / "decode.json"))
  assert [(r["attention"], r["length"]) for r in rows] == [
      ("fam", 100), ("bswa", 100), ("fam", 300), ("bswa", 300)]
  assert all(r["ms_per_token"] > 0 and len(r["times"]) == 1 for r in rows)
  assert os.path.getsize(tmp_path / "decode.png") > 10_000
  cells = _table_rows(tmp_path / "decode.md")
  assert [c[3].strip() for c in cells if c[0].strip() == "100"] == [
      "1.000", "1.000"]  # each kind against its own first length


def test_mfu_refuses_cpu_without_allow_cpu(tmp_path):
  with pytest.raises(SystemExit, match="no GPU or TPU"):
    fam_bench.main(["mfu", "--out", str(tmp_path)])
