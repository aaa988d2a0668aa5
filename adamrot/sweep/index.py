"""A sweep's state on disk: ``OUT_DIR/index.json`` (+ ``index.csv``), one entry per run, written
only by the sweep process that holds ``OUT_DIR/.sweep.lock``; the per-run job record
``RUN_DIR/job.json`` written by a launched job (the one piece of state a cluster job reports
back); and what a run directory needs before a (re)start. See ``docs/CLUSTER.md``.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from adamrot.runs import atomic_write, canon
from adamrot.sweep.spec import RunSpec, SweepSpec, default_command
from callbacks.exits import EXIT_PREEMPTED  # noqa: F401

#: ``queued``: submitted to a job scheduler, not started yet
STATUSES = ("pending", "queued", "running", "finished", "failed", "interrupted")
LOG_NAME = "run.log"
JOB_RECORD = "job.json"
INDEX_JSON = "index.json"
INDEX_CSV = "index.csv"
ATTEMPTS_DIR = ".attempts"
LOCK_NAME = ".sweep.lock"
LOG_TAIL_LINES = 30

def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="milliseconds")


def new_entry(run: RunSpec, run_dir: str) -> dict[str, Any]:
    return {
        "name": run.name, "overrides": run.overrides, "status": "pending", "returncode": None,
        "wall_time_s": None, "total_wall_time_s": 0.0, "attempts": 0, "resumed": False,
        "dir": run_dir, "started_at": None, "finished_at": None, "command": None,
        "log_tail": None, "job_id": None,
    }


def load_index(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(out_dir) / INDEX_JSON
    if not p.exists():
        return None
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def save_index(out_dir: str | os.PathLike, index: dict[str, Any]) -> None:
    """Write ``index.json`` and its flat view ``index.csv`` (one column per override key)."""
    out = Path(out_dir)
    index["updated_at"] = now()
    atomic_write(out / INDEX_JSON, json.dumps(index, indent=2, default=str) + "\n")
    entries = index.get("runs", [])
    okeys: list[str] = []
    for e in entries:
        okeys += [k for k in e.get("overrides", {}) if k not in okeys]
    cols = ["name", "status", "returncode", "wall_time_s", "total_wall_time_s",
            "attempts", "resumed", "dir"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols + okeys)
    for e in entries:
        o = e.get("overrides", {})
        row = [e.get(c) for c in cols] + [
            (json.dumps(o[k]) if isinstance(o[k], (dict, list)) else o[k]) if k in o else ""
            for k in okeys]
        w.writerow(["" if x is None else x for x in row])
    atomic_write(out / INDEX_CSV, buf.getvalue())


def merge_index(spec: SweepSpec, runs: list[RunSpec], prev: dict[str, Any] | None,
                sweep_file: str | None, say) -> dict[str, Any]:
    """The index for this invocation: the previous entries of runs still in the sweep (a changed
    override is taken over unless the run finished), new entries for new runs."""
    prev_entries = {e["name"]: e for e in (prev or {}).get("runs", [])}
    stale = [k for k in prev_entries if k not in {r.name for r in runs}]
    if stale:
        say(f"note: {len(stale)} run(s) in the old index are no longer in the sweep and "
            f"are dropped from it: {', '.join(stale)}")
    entries = []
    for r in runs:
        run_dir = os.path.join(spec.out_dir, r.name)
        e = {**new_entry(r, run_dir), **prev_entries.get(r.name, {}), "dir": run_dir}
        if canon(e["overrides"]) != canon(r.overrides):
            if e["status"] == "finished":
                say(f"warning: overrides of finished run {r.name!r} changed; it is NOT rerun "
                    "(delete its index entry to rerun it)")
            else:
                e["overrides"] = r.overrides
        entries.append(e)
    return {
        "sweep": spec.name,
        "sweep_file": os.path.abspath(sweep_file) if sweep_file else None,
        "out_dir": spec.out_dir, "configs": spec.configs,
        "command": spec.command or default_command(),
        "created_at": (prev or {}).get("created_at") or now(),
        "runs": entries,
    }


def log_tail(path: str | os.PathLike, n: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-n:])


def fmt_dur(s: float) -> str:
    h, rem = divmod(int(round(s)), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def ckpt_file(run_dir: str | os.PathLike) -> str:
    return os.path.join(run_dir, "checkpoints", "last.ckpt")


def plan_action(entry: dict[str, Any] | None, run_dir: str, only_failed: bool = False) -> str:
    """One of ``skip-finished``, ``skip``, ``resume``, ``rerun``, ``run``."""
    status = (entry or {}).get("status", "pending")
    if status == "finished":
        if not os.path.isdir(run_dir) or not any(os.scandir(run_dir)):
            return "run"          # its directory was deleted: run it again from scratch
        return "skip-finished"
    if only_failed and status != "failed":
        return "skip"
    if status == "failed":
        return "rerun"
    if os.path.isfile(ckpt_file(run_dir)):
        return "resume"
    return "run"


def archive_dir(out_dir: Path, run_dir: Path, name: str) -> Path | None:
    """Move a non-empty run directory to ``OUT_DIR/.attempts/<run>.<n>`` before a fresh start,
    so that stale event files never mix with new ones."""
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return None
    base = out_dir / ATTEMPTS_DIR
    base.mkdir(parents=True, exist_ok=True)
    n = 1
    while (base / f"{name}.{n}").exists():
        n += 1
    shutil.move(str(run_dir), str(base / f"{name}.{n}"))
    return base / f"{name}.{n}"


def resume_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """``last.ckpt`` of the run if there is one (``fit`` verifies it and refuses a damaged
    one, exit 2). ``config.yaml`` stays: a run keeps its starting config (docs/RUNS.md)."""
    ck = ckpt_file(run_dir)
    return ck if os.path.isfile(ck) else None


def prepare_run(out_dir: Path, run: RunSpec, action: str, say) -> str | None:
    """Make the run directory ready for ``action``; return the checkpoint to resume from."""
    run_dir = out_dir / run.name
    ck = resume_checkpoint(run_dir) if action == "resume" else None
    if action != "resume":
        moved = archive_dir(out_dir, run_dir, run.name)
        if moved is not None:
            say(f"note: old files of {run.name} moved to {moved}")
    run_dir.mkdir(parents=True, exist_ok=True)
    return ck


def start_attempt(e: dict[str, Any], cmd: list[str], ck: str | None, status: str) -> None:
    e.update(status=status, returncode=None, wall_time_s=None,
             attempts=int(e.get("attempts") or 0) + 1, resumed=bool(ck),
             started_at=now() if status == "running" else None, finished_at=None,
             command=cmd, log_tail=None)


def end_attempt(e: dict[str, Any], rc: int | None, wall_s: float | None, log: str | os.PathLike,
                status: str | None = None) -> None:
    """Record the end of an attempt: ``finished`` (rc 0), ``interrupted`` (rc 143: preempted
    after saving its checkpoint, or ``status`` given) or ``failed`` with the log's tail."""
    if status is None:
        status = "finished" if rc == 0 else "interrupted" if rc == EXIT_PREEMPTED else "failed"
    e.update(status=status, returncode=rc, finished_at=now(),
             log_tail=log_tail(log) if status == "failed" else None)
    if wall_s is not None:
        e["wall_time_s"] = round(wall_s, 3)
        e["total_wall_time_s"] = round(float(e.get("total_wall_time_s") or 0) + wall_s, 3)


# --------------------------------------------------------------------------- #
# job records (written inside a launched job, read by the sweep)
# --------------------------------------------------------------------------- #
def write_job_record(run_dir: str | os.PathLike, **fields: Any) -> None:
    """Update ``RUN_DIR/job.json`` with ``fields`` (state, job_id, returncode, times, host)."""
    path = Path(run_dir) / JOB_RECORD
    rec = read_job_record(run_dir) or {}
    rec.update(fields, updated_at=now())
    atomic_write(path, json.dumps(rec, indent=2, default=str) + "\n")


def read_job_record(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / JOB_RECORD).read_text())
    except (OSError, ValueError):
        return None


def latest_step(run_dir: str | os.PathLike) -> int | None:
    """The largest global step in the run's TensorBoard event files (``None`` if there are none)."""
    files = sorted(Path(run_dir).rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    step = None
    for f in files[-2:]:
        try:
            for ev in EventFileLoader(str(f)).Load():
                if ev.HasField("summary"):
                    step = ev.step if step is None else max(step, ev.step)
        except Exception:  # noqa: BLE001 - a file being written may end mid-record
            continue
    return step


# --------------------------------------------------------------------------- #
# the state one invocation works on
# --------------------------------------------------------------------------- #
class Sweep:
    """The runs of one invocation, their index entries and how to save them."""

    def __init__(self, spec: SweepSpec, runs: list[RunSpec], index: dict[str, Any], say):
        self.spec, self.runs, self.index, self.say = spec, runs, index, say
        self.out_dir = Path(spec.out_dir)
        self.entries = {e["name"]: e for e in index["runs"]}

    def run_dir(self, run: RunSpec) -> Path:
        return self.out_dir / run.name

    def save(self) -> None:
        save_index(self.out_dir, self.index)

    def mark_interrupted(self) -> int:
        """Child processes of this sweep still ``running`` in the index become ``interrupted``
        (resumed next time); submitted jobs keep their state."""
        live = [e for e in self.index["runs"] if e["status"] == "running"
                and e.get("launcher") in (None, "process")]
        for e in live:
            e["status"] = "interrupted"
        if live:
            self.save()
        return len(live)
