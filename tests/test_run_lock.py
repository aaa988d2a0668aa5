"""``.run.lock``: host and pid of the writer; a lock taken on another host is never taken
over without ``--break_lock``; a stale local lock is taken over by exactly one of several
processes racing for it (docs/RUNS.md)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adamrot.runs import DirLock, LockedError, hostname

ROOT = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_records_host_and_pid(tmp_path):
    with DirLock(tmp_path, ".run.lock", what="adamrot fit") as lock:
        rec = json.loads(lock.path.read_text())
        assert rec["pid"] > 0 and rec["host"] == hostname() and rec["token"] == lock.token
    assert not (tmp_path / ".run.lock").exists()


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    path = tmp_path / ".run.lock"
    theirs = json.dumps({"pid": dead_pid(), "host": "node-17", "token": "x",
                         "command": "adamrot fit --config a.yaml"})
    path.write_text(theirs)
    with pytest.raises(LockedError, match="node-17") as e:
        DirLock(tmp_path, ".run.lock").acquire()
    assert "--break_lock" in str(e.value) and "adamrot fit --config a.yaml" in str(e.value)
    assert path.read_text() == theirs                 # untouched
    lock = DirLock(tmp_path, ".run.lock", break_lock=True).acquire()
    assert lock.held and lock.broken["host"] == "node-17"
    assert json.loads(path.read_text())["host"] == hostname()
    lock.release()


def test_fit_refuses_a_lock_from_another_host(tmp_path, capsys):
    from test_run_integrity import TINY, refused
    run = tmp_path / "run"
    run.mkdir()
    (run / ".run.lock").write_text(json.dumps({"pid": 1, "host": "node-17", "token": "x",
                                               "command": "adamrot fit"}))
    err = refused(capsys, "fit", *TINY, "--trainer.default_root_dir", str(run))
    assert "taken on another host (node-17" in err and "--break_lock true" in err
    assert sorted(p.name for p in run.iterdir()) == [".run.lock"]


def test_a_live_local_lock_is_refused_and_a_dead_one_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".run.lock").write_text(json.dumps(
            {"pid": holder.pid, "host": hostname(), "token": "t", "command": "first"}))
        with pytest.raises(LockedError, match=f"pid {holder.pid} on {hostname()}: first"):
            DirLock(tmp_path, ".run.lock").acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = DirLock(tmp_path, ".run.lock").acquire()
    assert lock.held
    lock.release()


RACER = """
import sys, time
sys.path.insert(0, {root!r})
from adamrot.runs import DirLock, LockedError
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time() - 0.05))
while time.time() < start:
    pass
try:
    lock = DirLock(sys.argv[1], ".run.lock").acquire()
except LockedError:
    print("refused", flush=True)
    sys.exit(0)
print("held", flush=True)
time.sleep(3.0)
lock.release()
"""


@pytest.mark.parametrize("racers", [2, 4])
def test_stale_lock_takeover_is_race_free(tmp_path, racers):
    script = tmp_path / "racer.py"
    script.write_text(RACER.format(root=str(ROOT)))
    for attempt in range(2):
        d = tmp_path / f"run{attempt}"
        d.mkdir()
        (d / ".run.lock").write_text(json.dumps(
            {"pid": dead_pid(), "host": hostname(), "token": "stale", "command": "killed"}))
        start = time.time() + 5.0
        procs = [subprocess.Popen([sys.executable, str(script), str(d), str(start)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(racers)]
        outs = [p.communicate(timeout=60)[0].strip() for p in procs]
        assert sorted(outs) == ["held"] + ["refused"] * (racers - 1), outs
        assert not (d / ".run.lock").exists() and not (d / ".run.lock.takeover").exists()
