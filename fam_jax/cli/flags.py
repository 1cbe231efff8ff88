"""Command-line flags shared by the CLIs: the attention layout of a FamConfig."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from fam_jax.config import ATTENTION_KINDS, FIRST_FAM_RESIDUALS, FamConfig

# Flag -> (FamConfig field, help). The fields a checkpoint does not fix: the
# same weights run as full, bswa or fam attention with any block layout.
_ATTENTION_FLAGS = {
    "--attention": ("attention", "full, bswa (Algorithm 1) or fam (Algorithm 2)"),
    "--block-size": ("block_size", "N, tokens per block (paper: 1024)"),
    "--memory-segments": ("memory_segments",
                          "m, earlier blocks each block attends to (paper: 3)"),
    "--fam-length": ("fam_length", "F, FAM tokens per layer (paper: 64)"),
    "--first-fam-residual": ("first_fam_residual",
                             "see FamConfig.first_fam_residual"),
}
_CHOICES = {"attention": ATTENTION_KINDS,
            "first_fam_residual": FIRST_FAM_RESIDUALS}


def add_attention_flags(parser: argparse.ArgumentParser, *,
                        with_defaults: bool) -> None:
  """Adds --attention, --block-size, --memory-segments, --fam-length and
  --first-fam-residual.

  Args:
    parser: the CLI's parser.
    with_defaults: default each flag to FamConfig's default (the paper's
      values); otherwise a flag left out is None (keep the checkpoint's).
  """
  defaults = {f.name: f.default for f in dataclasses.fields(FamConfig)}
  for flag, (field, help_text) in _ATTENTION_FLAGS.items():
    default = defaults[field] if with_defaults else None
    kind = {"choices": _CHOICES[field]} if field in _CHOICES else {"type": int}
    parser.add_argument(flag, default=default, help=help_text, **kind)


def attention_fields(args: argparse.Namespace) -> dict[str, Any]:
  """The FamConfig fields the attention flags give (those not None)."""
  fields = {field: getattr(args, field) for field, _ in _ATTENTION_FLAGS.values()}
  return {k: v for k, v in fields.items() if v is not None}
