"""``adamrot probe``: measurements at a checkpoint in its rotated space; the command and its
help text are in :mod:`.cli`."""
from .cli import build_parser, main
from .loading import ProbeError, gpt_loss
from .run import run_probe

__all__ = ["build_parser", "main", "run_probe", "ProbeError", "gpt_loss"]
