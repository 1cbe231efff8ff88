"""What a run shows: TensorBoard events, a JSONL of metrics, a progress line, and
a loss-curve PNG.

TensorBoard events are written with clu's `metric_writers`, the writer t5x uses,
so fam-train and t5x runs look the same in TensorBoard (`<model_dir>/train`,
`<model_dir>/eval`); clu comes with seqio. `<model_dir>/metrics.jsonl` has one
line per training step and per evaluation; when a run resumes from step s, lines
after s (work the crash lost) are dropped first, so the file always tells one
consistent history.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Mapping, Optional

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def read_metrics(model_dir: str) -> list[dict[str, Any]]:
  """The JSONL records; a torn last line (a killed write) is ignored."""
  path = os.path.join(model_dir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        break
  return records


class MetricsLog:
  """Writes metrics of the main process (process 0) to JSONL and TensorBoard."""

  def __init__(self, model_dir: str, resume_step: Optional[int],
               enabled: bool = True):
    self._enabled = enabled
    self._path = os.path.join(model_dir, METRICS_FILE)
    self._writers = {}
    self._model_dir = model_dir
    if not enabled:
      return
    kept = [r for r in read_metrics(model_dir)
            if resume_step is not None and r["step"] <= resume_step]
    tmp = self._path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, self._path)
    self._file = open(self._path, "a")

  def _writer(self, split: str):
    if split not in self._writers:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
      self._writers[split] = metric_writers.create_default_writer(
          os.path.join(self._model_dir, split), asynchronous=False)
    return self._writers[split]

  def write(self, step: int, split: str, metrics: Mapping[str, float],
            tensorboard: bool = True) -> None:
    if not self._enabled:
      return
    record = {"step": int(step), "split": split,
              **{k: float(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if tensorboard:
      self._writer(split).write_scalars(int(step), dict(metrics))

  def close(self) -> None:
    if not self._enabled:
      return
    self._file.close()
    for writer in self._writers.values():
      writer.flush()
      writer.close()


class Progress:
  """`step k/N [####....] loss x | tokens/s | ETA` on stderr: redrawn in place
  on a terminal, one line per 10% otherwise (logs)."""

  def __init__(self, first_step: int, last_step: int, stream=None,
               enabled: bool = True, messages: bool = True):
    self._stream = sys.stderr if stream is None else stream
    self._tty = hasattr(self._stream, "isatty") and self._stream.isatty()
    self._first, self._last = first_step, last_step
    self._enabled = enabled  # the bar
    self._messages = messages  # evaluations, signals, exports: shown without the bar too
    self._start: Optional[float] = None  # after the first (compiling) step
    self._tokens = 0.0
    self._shown_decile = -1
    self._drawn = 0.0
    self.tokens_per_second = 0.0

  def update(self, step: int, loss: float, tokens: float) -> None:
    now = time.perf_counter()
    if self._start is None:
      self._start, self._start_step = now, step
    else:
      self._tokens += tokens
    done = step - self._start_step
    rate = self._tokens / max(now - self._start, 1e-9)
    if done:
      self.tokens_per_second = rate
    if not self._enabled:
      return
    per_step = (now - self._start) / max(done, 1)
    eta = _duration(per_step * (self._last - step)) if done else "?"
    fraction = (step - self._first) / max(self._last - self._first, 1)
    bar = "#" * int(30 * fraction)
    line = (f"step {step}/{self._last} [{bar:.<30}] loss {loss:.4f} | "
            f"{rate:,.0f} tokens/s | ETA {eta}")
    if self._tty:
      if now - self._drawn > 0.2 or step == self._last:
        self._stream.write("\r" + line + ("\n" if step == self._last else ""))
        self._drawn = now
    else:
      decile = int(10 * fraction)
      if decile == self._shown_decile and step != self._last:
        return
      self._shown_decile = decile
      self._stream.write(line + "\n")
    self._stream.flush()

  def message(self, text: str) -> None:
    if self._messages:
      self._stream.write(("\n" if self._tty and self._enabled else "") + text + "\n")
      self._stream.flush()


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  return f"{seconds // 60}m{seconds % 60:02d}s"


def plot_loss(model_dir: str) -> Optional[str]:
  """Writes <model_dir>/loss.png (train loss per step, eval losses); its path,
  or None without matplotlib or metrics."""
  records = read_metrics(model_dir)
  train = [(r["step"], r["loss"]) for r in records if r["split"] == "train"]
  if not train:
    return None
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot(*zip(*train), label="train loss", linewidth=1)
  evals = [r for r in records if r["split"] == "eval"]
  for key in sorted({k for r in evals for k in r if k.endswith("/loss")}):
    points = [(r["step"], r[key]) for r in evals if key in r]
    ax.plot(*zip(*points), "o-", label=key)
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats / weighted token)")
  ax.grid(alpha=0.3)
  ax.legend()
  path = os.path.join(model_dir, PLOT_FILE)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
