"""What the ``adamrot`` commands share about run directories: canonical values for comparing
configs, the lock that gives a directory a single writer, and the watchdog that ends a DDP
rank whose launcher died (see ``docs/RUNS.md``). Light imports only."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from callbacks.files import atomic_torch_save, atomic_write  # noqa: F401  (re-exported)
from callbacks.exits import EXIT_PEER_LOST  # noqa: F401

__all__ = ["canon", "pid_alive", "hostname", "DirLock", "LockedError", "atomic_write",
           "atomic_torch_save", "exit_with_launcher", "create_run_record", "read_run_record",
           "RUN_FILE", "EXIT_PEER_LOST", "LAUNCHER_ENV"]

#: exit status of a DDP rank that lost its launcher (the process that started it died)
#: environment variable with the pid of the process that launched the ranks of a run
LAUNCHER_ENV = "ADAMROT_LAUNCHER_PID"


def canon(v: Any) -> str:
    """A canonical string for a config value (dict key order ignored): equal iff same value."""
    return json.dumps(v, sort_keys=True, default=str)


class LockedError(RuntimeError):
    """Another live process holds the directory's lock (or one on another host)."""


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


def hostname() -> str:
    return socket.gethostname()


class DirLock:
    """An exclusive lock file ``DIR/NAME`` recording its owner: pid, host, a random token and
    the command line (JSON; older locks hold ``pid\\ncommand``).

    A second holder is refused with :class:`LockedError` naming the owner. A lock of a dead
    process of this host is taken over; a lock held on another host is never judged from here
    (its pid means nothing on this host: a live writer on another node of a shared filesystem)
    and is only taken over with ``break_lock=True``. Takeover is race-free: a stale lock is
    removed only under ``NAME.takeover`` (created with ``O_EXCL``) and only if it still holds
    the owner that was judged stale; the new lock is then created with ``O_EXCL``, so of
    several processes taking over one stale lock exactly one gets it.
    ``with DirLock(dir, ".run.lock", what="run"):``.
    """

    #: a takeover mutex older than this (seconds) was left by a killed process
    TAKEOVER_STALE_S = 30.0

    def __init__(self, directory: str | os.PathLike, name: str = ".lock", what: str = "run",
                 break_lock: bool = False):
        self.path = Path(directory) / name
        self.what = what
        self.break_lock = break_lock
        self.held = False
        self.token = uuid.uuid4().hex
        self.broken: Optional[dict] = None          # the owner a --break-lock took over from

    def read(self) -> Optional[dict]:
        """The owner recorded in the lock file (None when there is none)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {"pid": 0, "host": None, "token": None, "command": "", "raw": ""}
        try:
            rec = json.loads(text)
            if isinstance(rec, dict):
                rec["raw"] = text
                return rec
        except ValueError:
            pass
        first, _, rest = text.partition("\n")            # the older format: pid, command
        try:
            pid = int(first.strip() or 0)
        except ValueError:
            pid = 0
        return {"pid": pid, "host": None, "token": None, "command": rest.strip(), "raw": text}

    def owner(self) -> tuple[int, str]:
        rec = self.read() or {}
        return int(rec.get("pid") or 0), str(rec.get("command") or "")

    def _describe(self, rec: dict) -> str:
        host = rec.get("host")
        return (f"pid {rec.get('pid')}" + (f" on {host}" if host else "")
                + f": {rec.get('command') or '?'}")

    def _mine(self, rec: dict) -> bool:
        return rec.get("token") == self.token

    def _create(self, me: str) -> bool:
        """Create the lock file with its content in one step (written to a temporary file,
        then hard-linked into place, which fails if the lock exists): nobody ever reads a
        lock file that is still empty. False if the lock exists."""
        tmp = self.path.with_name(f"{self.path.name}.{self.token}.tmp")
        with open(tmp, "w") as f:
            json.dump({"pid": os.getpid(), "host": me, "token": self.token,
                       "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                       "command": " ".join(sys.argv)}, f)
            f.write("\n")
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def acquire(self) -> "DirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = hostname()
        for _ in range(20):
            if self._create(me):
                self.held = True
                return self
            rec = self.read()
            if rec is None:
                continue                                        # released meanwhile
            host = rec.get("host") or me
            pid = int(rec.get("pid") or 0)
            if host == me and pid == os.getpid():
                self.held = False  # re-entrant use by the same process: not ours to drop
                return self
            if host != me and not self.break_lock:
                raise LockedError(
                    f"another {self.what} ({self._describe(rec)}) holds {self.path}, taken "
                    f"on another host ({host}; this is {me}): its process cannot be checked "
                    "from here. If it is certainly gone, pass --break_lock true")
            if host == me and pid_alive(pid):
                raise LockedError(
                    f"another {self.what} ({self._describe(rec)}) is writing to "
                    f"{self.path.parent}; remove {self.path} if that is wrong")
            if self._remove_if_unchanged(rec) and host != me:
                self.broken = rec
        raise LockedError(f"could not acquire {self.path}")

    def _remove_if_unchanged(self, judged: dict) -> bool:
        """Remove the lock file if it still holds ``judged`` (under the takeover mutex)."""
        mutex = self.path.with_name(self.path.name + ".takeover")
        deadline = time.monotonic() + 10.0
        while True:
            try:
                fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                try:
                    age = time.time() - mutex.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age > self.TAKEOVER_STALE_S:
                    with contextlib.suppress(FileNotFoundError):
                        mutex.unlink()
                    continue
                if time.monotonic() > deadline:
                    raise LockedError(f"could not take over {self.path}: {mutex} is held")
                time.sleep(0.01)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
            os.close(fd)
            now = self.read()
            if now is None or now.get("raw") != judged.get("raw"):
                return False                                  # someone else took it over
            self.path.unlink()
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                mutex.unlink()

    def release(self) -> None:
        if self.held:
            rec = self.read()
            if rec is not None and self._mine(rec):
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            self.held = False

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


#: the run's identity, written once when the run is created
RUN_FILE = "run.json"


def create_run_record(run_dir: str | os.PathLike, **fields: Any) -> dict:
    """``DIR/run.json`` with a new run id, written once (``O_EXCL``): the record of an
    existing run is returned unchanged. A copy of the directory keeps the id, so the report
    can tell a copy from another seed."""
    path = Path(run_dir) / RUN_FILE
    existing = read_run_record(run_dir)
    if existing is not None:
        return existing
    rec = {"run_id": uuid.uuid4().hex, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "host": hostname(), "command": " ".join(sys.argv), **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return read_run_record(run_dir) or rec
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(rec, indent=1, sort_keys=True, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return rec


def read_run_record(run_dir: str | os.PathLike) -> Optional[dict]:
    """``DIR/run.json`` (None for runs created before run ids, or unreadable)."""
    try:
        rec = json.loads((Path(run_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("run_id") else None


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
