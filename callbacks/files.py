"""Crash-safe file writes shared by checkpoints, sweep indexes, reports and probes.

A reader sees the old file or the new one, never a torn one: data goes to a temporary file in
the target's directory, is flushed and fsync'd, renamed over the target (atomic on POSIX) and
the directory is fsync'd. A writer killed mid-way leaves only a ``.NAME.*.tmp`` file, removed
by the next successful write of that target.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

__all__ = ["atomic_write", "atomic_write_with", "atomic_torch_save", "fsync_dir"]


def fsync_dir(directory: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Recording:
    """A binary file that remembers the ``OSError`` of a failed write: serializers such as
    ``torch.save`` turn it into their own error (``RuntimeError: [enforce fail at
    inline_container.cc…]``), which would hide a full disk or a lost permission."""

    def __init__(self, f: IO[bytes]):
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def atomic_write_with(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a binary temporary file, then move it over ``path`` atomically.

    A failed write (disk full, quota, permission) raises the ``OSError`` itself with
    ``filename`` set to ``path``, whatever ``write`` made of it; ``path`` is left as it was."""
    path = Path(os.path.abspath(os.fspath(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    f = None
    try:
        with os.fdopen(fd, "wb") as raw:
            f = _Recording(raw)
            write(f)
            f.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        cause = f.error if f is not None else None
        if cause is not None and cause is not e:
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from e
        if isinstance(e, OSError) and e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    fsync_dir(path.parent)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to ``path`` atomically."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    atomic_write_with(path, lambda f: f.write(raw))


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    atomic_write_with(path, lambda f: torch.save(obj, f))
