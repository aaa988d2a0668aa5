"""What the ``adamrot`` commands share about run directories: canonical values for comparing
configs, and the lock that gives a directory a single writer (see ``docs/RUNS.md``)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from callbacks.files import atomic_torch_save, atomic_write  # noqa: F401  (re-exported)

__all__ = ["canon", "DirLock", "LockedError", "atomic_write", "atomic_torch_save"]


def canon(v: Any) -> str:
    """A canonical string for a config value (dict key order ignored): equal iff same value."""
    return json.dumps(v, sort_keys=True, default=str)


class LockedError(RuntimeError):
    """Another live process holds the directory's lock."""


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirLock:
    """An exclusive lock file ``DIR/NAME`` holding ``pid`` and command line of its owner.

    A second holder is refused with :class:`LockedError` naming the owner; a lock left by a
    dead process is taken over. ``with DirLock(dir, ".run.lock", what="run"):``.
    """

    def __init__(self, directory: str | os.PathLike, name: str = ".lock", what: str = "run"):
        self.path = Path(directory) / name
        self.what = what
        self.held = False

    def owner(self) -> tuple[int, str]:
        try:
            first, _, rest = self.path.read_text().partition("\n")
            return int(first.strip() or 0), rest.strip()
        except (OSError, ValueError):
            return 0, ""

    def acquire(self) -> "DirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, cmd = self.owner()
                if pid != os.getpid() and _alive(pid):
                    raise LockedError(
                        f"another {self.what} (pid {pid}: {cmd or '?'}) is writing to "
                        f"{self.path.parent}; remove {self.path} if that is wrong")
                if pid == os.getpid():
                    self.held = False  # re-entrant use by the same process: not ours to drop
                    return self
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n{' '.join(sys.argv)}\n")
            self.held = True
            return self
        raise LockedError(f"could not acquire {self.path}")

    def release(self) -> None:
        if self.held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.held = False

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
