"""atomic.writing: a directory is replaced whole or not at all."""

import os

import pytest

from fam_jax import atomic

MARKER = "marker.json"


def _write(path, text, **kwargs):
  with atomic.writing(str(path), marker=MARKER, kind="a test directory",
                      **kwargs) as tmp:
    for name in (MARKER, "data.txt"):
      with open(os.path.join(tmp, name), "w") as f:
        f.write(text)


def _read(path):
  return {name: open(os.path.join(path, name)).read()
          for name in sorted(os.listdir(path))}


def test_writes_into_an_absent_or_empty_destination(tmp_path):
  _write(tmp_path / "new" / "deeper", "a")
  assert _read(tmp_path / "new" / "deeper") == {MARKER: "a", "data.txt": "a"}
  (tmp_path / "empty").mkdir()
  _write(tmp_path / "empty", "b")
  assert _read(tmp_path / "empty")["data.txt"] == "b"
  assert sorted(os.listdir(tmp_path)) == ["empty", "new"]


def test_an_existing_destination_is_refused_before_the_block_runs(tmp_path):
  _write(tmp_path / "d", "old")
  ran = []
  with pytest.raises(atomic.DestinationExists, match="already holds a test "
                     "directory; replace it with --overwrite"):
    with atomic.writing(str(tmp_path / "d"), marker=MARKER, kind="a test directory"):
      ran.append(True)
  assert not ran and _read(tmp_path / "d")["data.txt"] == "old"
  _write(tmp_path / "d", "new", overwrite=True)
  assert _read(tmp_path / "d") == {MARKER: "new", "data.txt": "new"}
  assert os.listdir(tmp_path) == ["d"]


def test_other_content_is_never_replaced(tmp_path):
  (tmp_path / "home").mkdir()
  (tmp_path / "home" / "thesis.tex").write_text("years of work")
  (tmp_path / "file").write_text("x")
  for target in ("home", "file"):
    with pytest.raises(atomic.DestinationExists,
                       match=f"{target} exists and is not a test directory "
                       f"\\(no {MARKER}\\).*not replaced, even with --overwrite"):
      _write(tmp_path / target, "new", overwrite=True)
  assert _read(tmp_path / "home") == {"thesis.tex": "years of work"}


def test_an_error_inside_leaves_the_old_content_and_no_temporary(tmp_path):
  _write(tmp_path / "d", "old")
  with pytest.raises(RuntimeError, match="disk full"):
    with atomic.writing(str(tmp_path / "d"), marker=MARKER, kind="x",
                        overwrite=True) as tmp:
      open(os.path.join(tmp, MARKER), "w").close()
      raise RuntimeError("disk full")
  assert _read(tmp_path / "d")["data.txt"] == "old"
  assert os.listdir(tmp_path) == ["d"]


def test_ctrl_c_inside_says_the_old_content_was_kept(tmp_path):
  _write(tmp_path / "d", "old")
  with pytest.raises(KeyboardInterrupt) as interrupt:
    with atomic.writing(str(tmp_path / "d"), marker=MARKER, kind="x",
                        overwrite=True):
      raise KeyboardInterrupt
  assert interrupt.value.__notes__ == [f"{tmp_path / 'd'} was left as it was"]
  assert _read(tmp_path / "d")["data.txt"] == "old"
  assert os.listdir(tmp_path) == ["d"]


def test_abandoned_temporaries_of_dead_processes_are_removed(tmp_path):
  dead = tmp_path / ".d.partial-999999999-abcd"  # no such pid
  alive = tmp_path / f".d.partial-{os.getpid()}-abcd"
  other = tmp_path / ".e.partial-999999999-abcd"
  for path in (dead, alive, other):
    path.mkdir()
  _write(tmp_path / "d", "a")
  assert sorted(os.listdir(tmp_path)) == sorted(["d", alive.name, other.name])


def test_swap_without_renameat2(tmp_path, monkeypatch):
  class NoRenameat2:
    def __init__(self, *args, **kwargs):
      pass

  _write(tmp_path / "d", "old")
  monkeypatch.setattr(atomic.ctypes, "CDLL", NoRenameat2)
  _write(tmp_path / "d", "new", overwrite=True)
  assert _read(tmp_path / "d")["data.txt"] == "new"
  assert os.listdir(tmp_path) == ["d"]
