"""One error path for every fam-jax command line program.

    def main(argv=None) -> int:              # the console script
      return errors.run_main("fam-generate", _main, argv)

    def _main(argv) -> int:
      args = parser.parse_args(argv)         # with errors.add_debug_flag(parser)
      with errors.user_errors(ValueError, context=f"--gin {args.gin}"):
        parse_gin(args.gin)
      if bad:
        raise errors.UserError("--top-p must be in (0, 1]; got 1.5")

A `UserError` is a problem with what the user gave (a file, a field, a flag):
`run_main` prints it as one line, `fam-generate: <message>`, and returns 2, the
status argparse uses for bad arguments. With `--debug` it shows the traceback
instead. Every other exception is a bug and keeps its traceback. Ctrl-C prints
one line and returns 130 (128 + SIGINT).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
from typing import Callable, Iterator, Optional, Sequence

USAGE_ERROR = 2
INTERRUPTED = 130
MAX_MESSAGE = 500


class UserError(Exception):
  """Bad input: the message says what is wrong, naming the file, field or flag."""


@contextlib.contextmanager
def user_errors(*types: type, context: str = "") -> Iterator[None]:
  """Turns exceptions of `types` raised inside the block into UserError.

  Args:
    *types: exception classes that mean bad input here (e.g. ValueError around
      a config parser); anything else passes through as a bug.
    context: the flag and file the block reads ("--checkpoint ckpt/",
      "--gin/--gin-binding"): prefixed to the message unless the message
      already names the file (the context's last word).
  """
  try:
    yield
  except types as e:
    message = one_line(e)
    if context and context.split()[-1] not in message:
      message = f"{context}: {message}"
    raise UserError(message) from e


def one_line(error: BaseException) -> str:
  """The first line of an exception's message, at most MAX_MESSAGE characters
  (tensorstore and gin messages run to many lines)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = lines[0] if lines else type(error).__name__
  if isinstance(error, KeyError) and text.startswith("'"):
    text = f"missing {text}"
  return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--debug", action="store_true",
                      help="show the traceback of an error instead of one line")


def run_main(prog: str, main: Callable[[list[str]], int],
             argv: Optional[Sequence[str]] = None) -> int:
  """Calls main(argv) and reports a UserError or Ctrl-C in one line on stderr.

  Returns main's status, 2 after a UserError, 130 after Ctrl-C.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = "--debug" in argv
  try:
    return main(argv)
  except UserError as e:
    if debug:
      traceback.print_exc()
    print(f"{prog}: {e}", file=sys.stderr)
    return USAGE_ERROR
  except KeyboardInterrupt as e:
    if debug:
      traceback.print_exc()
    notes = "; ".join(getattr(e, "__notes__", []))
    print(f"{prog}: interrupted" + (f"; {notes}" if notes else ""),
          file=sys.stderr)
    return INTERRUPTED
