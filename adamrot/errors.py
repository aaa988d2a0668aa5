"""The command's runtime basics, imported by every subcommand (never the dispatcher
:mod:`adamrot.cli`, so nothing imports in a circle): refused input (:class:`ConfigError`,
:func:`refuse`) and which process this is (:func:`rank_label`), and the one line for a write the storage refused
(:func:`storage_error`). Exit statuses:
:mod:`callbacks.exits`."""
from __future__ import annotations

import errno
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


#: errno values that mean "the storage refused the write" (not a bug of ours)
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


def storage_error(e: BaseException) -> Optional[str]:
    """The one-line message for a write the storage refused (disk full, quota, permissions,
    read-only filesystem), naming the file; None for any other error (which is re-raised)."""
    if not isinstance(e, OSError) or e.errno not in STORAGE_ERRNOS:
        return None
    where = f" {e.filename}" if e.filename else ""
    return f"cannot write{where}: {e.strerror or os.strerror(e.errno)}"


def refused_write(e: OSError, after: str) -> int:
    """For a command's ``except OSError``: print the one line of a write the storage refused,
    followed by ``after`` (what happens now), and return exit status 2; re-raise any other
    error."""
    msg = storage_error(e)
    if msg is None:
        raise e
    sys.stderr.write(f"adamrot: error: {msg}; {after}\n")
    return EXIT_CONFIG_ERROR
