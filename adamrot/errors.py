"""The command's runtime basics, imported by every subcommand (never the dispatcher
:mod:`adamrot.cli`, so nothing imports in a circle): refused input (:class:`ConfigError`,
:func:`refuse`) and which process this is (:func:`rank_label`). Exit statuses:
:mod:`callbacks.exits`."""
from __future__ import annotations

import os
import sys
from typing import NoReturn, Optional

from callbacks.exits import EXIT_CONFIG_ERROR


class ConfigError(ValueError):
    """Input refused before anything was written (exit status 2)."""


def refuse(message: str) -> NoReturn:
    """Print ``adamrot: error: MESSAGE`` and exit with status 2."""
    sys.stderr.write(f"adamrot: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_CONFIG_ERROR)


def rank_label() -> Optional[str]:
    """The rank of this process when it is not the one that launched the run (a DDP rank > 0
    started by Lightning, torchrun or SLURM), else None."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"):
        if os.environ.get(key, "0") != "0":
            return os.environ[key]
    return None
