"""A dependency-free progress line for long prefills (stderr)."""

from __future__ import annotations

import sys
import time


class ProgressBar:
  """`bar(done, total)` redraws at most every `interval` seconds: in place on a
  terminal, as separate lines at every 10% otherwise (logs)."""

  def __init__(self, label: str, stream=None, interval: float = 0.2):
    self._label = label
    stream = sys.stderr if stream is None else stream
    self._stream = stream
    self._interval = interval
    self._start = time.perf_counter()
    self._last = 0.0
    self._last_decile = -1
    self._tty = hasattr(stream, "isatty") and stream.isatty()

  def __call__(self, done: int, total: int) -> None:
    now = time.perf_counter()
    fraction = done / max(total, 1)
    if self._tty:
      if now - self._last < self._interval and done < total:
        return
      end = "\n" if done >= total else ""
      self._stream.write("\r" + self._line(done, total, now) + end)
    else:
      decile = int(fraction * 10)
      if decile == self._last_decile:
        return
      self._last_decile = decile
      self._stream.write(self._line(done, total, now) + "\n")
    self._last = now
    self._stream.flush()

  def _line(self, done: int, total: int, now: float) -> str:
    fraction = done / max(total, 1)
    width = 30
    filled = int(fraction * width)
    rate = done / max(now - self._start, 1e-9)
    return (f"{self._label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{100 * fraction:5.1f}% {done}/{total} tokens, {rate:,.0f} tokens/s")
