"""What the ``adamrot`` commands share about run directories: canonical values for comparing
configs, the lock that gives a directory a single writer, and the watchdog that ends a DDP
rank whose launcher died (see ``docs/RUNS.md``). Light imports only."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from callbacks.files import atomic_torch_save, atomic_write  # noqa: F401  (re-exported)

__all__ = ["canon", "pid_alive", "DirLock", "LockedError", "atomic_write", "atomic_torch_save",
           "exit_with_launcher", "EXIT_PEER_LOST", "LAUNCHER_ENV"]

#: exit status of a DDP rank that lost its launcher (the process that started it died)
EXIT_PEER_LOST = 4
#: environment variable with the pid of the process that launched the ranks of a run
LAUNCHER_ENV = "ADAMROT_LAUNCHER_PID"


def canon(v: Any) -> str:
    """A canonical string for a config value (dict key order ignored): equal iff same value."""
    return json.dumps(v, sort_keys=True, default=str)


class LockedError(RuntimeError):
    """Another live process holds the directory's lock."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (owned by anyone)."""
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
                if pid != os.getpid() and pid_alive(pid):
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


def exit_with_launcher(rank: str, interval_s: float = 1.0) -> threading.Thread:
    """Exit (status :data:`EXIT_PEER_LOST`) as soon as the process that launched this rank is
    gone — at once if it already is. For ranks > 0, started first thing: Lightning's ``ddp``
    launcher starts ranks 1… as children of rank 0 (which sets :data:`LAUNCHER_ENV`), and a
    rank whose rank 0 died would otherwise wait in the rendezvous or a collective until its
    timeout (30 min). Under torchrun or SLURM the parent at start is the launcher. Only rank 0
    writes checkpoints, so the run's files stay as the last completed save left them."""
    expected = os.environ.get(LAUNCHER_ENV)
    parent = int(expected) if expected and expected.isdigit() else os.getppid()

    def gone() -> None:
        sys.stderr.write(f"adamrot: error: rank {rank} lost its launcher (pid {parent} exited); "
                         "exiting. The run's checkpoints are as the last save left them: run "
                         "the same command to resume.\n")
        sys.stderr.flush()
        os._exit(EXIT_PEER_LOST)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                gone()
            time.sleep(interval_s)
    thread = threading.Thread(target=watch, name="adamrot-launcher-watchdog", daemon=True)
    thread.start()
    return thread
