"""Writing a directory as one step: readers see the old content or the new, never a mix.

    with atomic.writing("ckpt/", marker="fam_config.json",
                        kind="a fam-jax checkpoint") as tmp:
      ...write every file under tmp...
    # now ckpt/ holds exactly what was written, all of it

The files go into a temporary sibling, `.NAME.partial-PID-XXXX`, which becomes
the destination only when the block ends without an error. A destination that
already holds something is refused before anything is written, unless
`overwrite=True`; it is then swapped with the new directory in one system call
(Linux `renameat2(RENAME_EXCHANGE)`), so a process killed at any point leaves
the old directory or the new one. Elsewhere the swap is two renames with a
moment in between where the destination is missing (its old content sits in the
`.partial-` sibling). An error or Ctrl-C inside the block removes the temporary
directory; a killed process leaves it behind, and the next write into the same
parent removes it once its process is gone. This protects against the process
dying, not against power loss (no fsync).

`kill_point(name)` marks the steps of a write where the tests kill the process
(`FAM_JAX_KILL_AT=name`, or `name:INT` for a Ctrl-C).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import uuid
from typing import Iterator

KILL_ENV = "FAM_JAX_KILL_AT"
_PARTIAL = ".partial-"


class DestinationExists(FileExistsError):
  """The destination holds something and may not (or cannot) be replaced."""


def kill_point(name: str) -> None:
  """Test hook: the process kills itself here if FAM_JAX_KILL_AT names `name`
  (SIGKILL), or sends itself SIGINT for `name:INT`."""
  wanted = os.environ.get(KILL_ENV)
  if wanted == name:
    os.kill(os.getpid(), signal.SIGKILL)
  elif wanted == name + ":INT":
    os.kill(os.getpid(), signal.SIGINT)


def check_destination(path: str, *, overwrite: bool, marker: str,
                      kind: str) -> None:
  """Raises DestinationExists unless a write to `path` may go ahead.

  Absent paths and empty directories may always be written. A directory holding
  `marker` (the file that identifies `kind`) may be replaced with overwrite=True;
  anything else (a file, another directory) is never replaced.
  """
  if not os.path.lexists(path):
    return
  if os.path.isdir(path) and not os.path.islink(path):
    if not os.listdir(path):
      return
    if os.path.exists(os.path.join(path, marker)):
      if overwrite:
        return
      raise DestinationExists(f"{path} already holds {kind}; replace it with "
                              "--overwrite (in Python: overwrite=True)")
  raise DestinationExists(f"{path} exists and is not {kind} (no {marker}); "
                          "choose another path: it is not replaced, even with "
                          "--overwrite")


@contextlib.contextmanager
def writing(path: str, *, marker: str, kind: str,
            overwrite: bool = False) -> Iterator[str]:
  """Yields an empty temporary directory that replaces `path` when the block
  ends without an error (see the module docstring).

  Args:
    path: the destination directory.
    marker: a file every directory of this kind holds (e.g. fam_config.json);
      only such a directory is ever replaced.
    kind: what the directory is, for error messages ("a fam-jax checkpoint").
    overwrite: replace an existing directory of this kind.
  """
  path = os.path.abspath(path)
  check_destination(path, overwrite=overwrite, marker=marker, kind=kind)
  parent, name = os.path.split(path)
  os.makedirs(parent, exist_ok=True)
  _remove_abandoned(parent, name)
  tmp = os.path.join(parent,
                     f".{name}{_PARTIAL}{os.getpid()}-{uuid.uuid4().hex[:8]}")
  os.mkdir(tmp)
  committed = False
  try:
    yield tmp
    kill_point("before-commit")
    # Checked again: something may have appeared since the start.
    check_destination(path, overwrite=overwrite, marker=marker, kind=kind)
    if os.path.isdir(path) and os.listdir(path):
      _exchange(tmp, path)
      committed = True
      kill_point("after-exchange")
    else:
      os.rename(tmp, path)  # replaces an empty directory in one step
      committed = True
  except KeyboardInterrupt as e:
    e.add_note(f"{path} was written" if committed else
               f"{path} was left as it was")
    raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)  # the new files, or the old ones


def _exchange(new: str, old: str) -> None:
  """Swaps two directories; on return `old` holds what `new` held and vice versa."""
  libc = ctypes.CDLL(None, use_errno=True)
  renameat2 = getattr(libc, "renameat2", None)
  if renameat2 is not None:
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(new), at_fdcwd, os.fsencode(old),
                 rename_exchange) == 0:
      return
    errno = ctypes.get_errno()
    if errno not in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: no exchange here
      raise OSError(errno, os.strerror(errno), old)
  backup = new + "-old"
  os.rename(old, backup)
  os.rename(new, old)
  os.rename(backup, new)


def _remove_abandoned(parent: str, name: str) -> None:
  """Removes temporary directories of `name` left by processes that are gone."""
  prefix = f".{name}{_PARTIAL}"
  for entry in os.listdir(parent):
    if not entry.startswith(prefix):
      continue
    pid = entry[len(prefix):].split("-")[0]
    if pid.isdigit() and not _alive(int(pid)):
      shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True
