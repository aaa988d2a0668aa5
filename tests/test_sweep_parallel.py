"""``adamrot sweep --jobs N`` (fake trainer, no Lightning): concurrency bound, per-run devices and
threads, failure isolation, Ctrl-C with several children, resume."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from adamrot import sweep as sw
from test_sweep import REPO, calls, index, sweep_dict, write_sweep, ws  # noqa: F401 (fixture)

FOUR = {"seed_everything": [0, 1, 2, 3]}


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """Largest number of intervals open at one instant."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def index_spans(idx: dict) -> list[tuple[float, float]]:
    ts = dt.datetime.fromisoformat
    return [(ts(e["started_at"]).timestamp(), ts(e["finished_at"]).timestamp())
            for e in idx.values()]


def test_max_overlap_counts():
    assert max_overlap([(0, 2), (1, 3), (2.5, 4)]) == 2
    assert max_overlap([(0, 1), (1, 2)]) == 1  # an end at t closes before a start at t
    assert max_overlap([(0, 5), (1, 2), (1.5, 3)]) == 3


def test_jobs2_bound_isolation_and_index(ws, monkeypatch, capsys):
    write_sweep(ws / "s.yaml", sweep_dict(grid=FOUR))
    out = ws / "runs" / "demo"
    monkeypatch.setenv("FAKE_SLEEP", "0.8")
    monkeypatch.setenv("FAKE_FAIL", "seed=1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a CPU machine: threads are split
    assert sw.main(["s.yaml", "--jobs", "2"]) == 1
    idx = index(out)
    assert {k: e["status"] for k, e in idx.items()} == {
        "seed=0": "finished", "seed=1": "failed", "seed=2": "finished", "seed=3": "finished"}
    assert idx["seed=1"]["returncode"] == 3 and "RuntimeError: boom" in idx["seed=1"]["log_tail"]
    # at most 2 at once, and 2 did run at once (the trainers' own clocks and the index agree)
    spans = [(s["start"], s["end"]) for n in ("seed=0", "seed=2", "seed=3")
             for s in map(json.loads, (out / n / "spans.jsonl").read_text().splitlines())]
    assert max_overlap(spans) == 2
    assert max_overlap(index_spans(idx)) == 2
    for name, e in idx.items():
        assert e["attempts"] == 1 and len(calls(out / name)) == 1
        assert e["finished_at"] >= e["started_at"]
    csv_rows = (out / "index.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:2] for r in csv_rows] == [[k, e["status"]] for k, e in idx.items()]
    # CPU: each child gets cores // 2 threads
    cores = len(os.sched_getaffinity(0))
    assert {c["env"]["OMP_NUM_THREADS"] for n in idx for c in calls(out / n)} == {
        str(max(1, cores // 2))}
    assert not (out / ".sweep.lock").exists()
    capsys.readouterr()
    assert sw.main(["s.yaml", "--status"]) == 0  # reads only
    status = capsys.readouterr().out
    assert re.search(r"^seed=1\s+failed\s+rc=3", status, re.M)
    assert re.search(r"^\s+\| RuntimeError: boom$", status, re.M)
    assert re.search(r"^seed=0\s+finished\s+rc=0", status, re.M)
    assert "demo: finished=3, failed=1" in status

    # a second pass reruns only the failed run
    monkeypatch.setenv("FAKE_FAIL", "")
    assert sw.main(["s.yaml", "--jobs", "2"]) == 0
    idx = index(out)
    assert all(e["status"] == "finished" for e in idx.values())
    assert [len(calls(out / n)) for n in idx] == [1, 1, 1, 1]  # seed=1 in a fresh directory
    assert idx["seed=1"]["attempts"] == 2


def test_devices_per_run_gives_disjoint_gpu_sets(ws, monkeypatch):
    write_sweep(ws / "s.yaml", sweep_dict(grid=FOUR))
    out = ws / "runs" / "demo"
    monkeypatch.setenv("FAKE_SLEEP", "0.5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert sw.main(["s.yaml", "--jobs", "2", "--devices-per-run", "2"]) == 0
    idx = index(out)
    got = {n: calls(out / n)[0]["env"]["CUDA_VISIBLE_DEVICES"] for n in idx}
    assert set(got.values()) <= {"0,1", "2,3"}
    # runs that overlapped in time had different GPUs
    spans = {n: index_spans({n: e})[0] for n, e in idx.items()}
    for a in idx:
        for b in idx:
            if a < b and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]:
                assert got[a] != got[b], (a, b)
    # asking for more GPUs than the machine has: refused before anything is written
    write_sweep(ws / "t.yaml", sweep_dict(grid=FOUR, out_dir="runs/t"))
    assert sw.main(["t.yaml", "--jobs", "3", "--devices-per-run", "2"]) == 2
    assert not (ws / "runs" / "t").exists()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert sw.main(["t.yaml", "--devices-per-run", "1"]) == 2
    assert not (ws / "runs" / "t").exists()


def test_launch_section_and_flag_errors(ws, capsys):
    write_sweep(ws / "s.yaml", sweep_dict(grid=FOUR, launch={"jobs": 0}))
    assert sw.main(["s.yaml"]) == 2
    assert "launch.jobs: expected a positive integer" in capsys.readouterr().err
    write_sweep(ws / "s.yaml", sweep_dict(grid=FOUR, launch={"bogus": 1}))
    assert sw.main(["s.yaml"]) == 2
    assert "launch: unknown key(s) 'bogus'" in capsys.readouterr().err
    write_sweep(ws / "s.yaml", sweep_dict(grid=FOUR))
    assert sw.main(["s.yaml", "--partition", "gpu"]) == 2
    assert "partition: SLURM option(s) given, but the launcher is 'process'" in \
        capsys.readouterr().err
    assert sw.main(["s.yaml", "--launcher", "slurm"]) == 2
    assert "--launcher slurm needs a time limit" in capsys.readouterr().err
    assert sw.main(["s.yaml", "--launcher", "slurm", "--time", "1:xx"]) == 2
    assert "--time: '1:xx' is not a SLURM time" in capsys.readouterr().err
    assert not (ws / "runs").exists()


@pytest.mark.parametrize("value, minutes", [
    (90, 90), ("90", 90), ("1:30:00", 90), ("2-00:00:00", 2880), ("1-2", 1560), ("10:30", 11)])
def test_slurm_time_formats(value, minutes):
    assert sw.options.parse_time_min(value, "--time") == minutes


def test_ctrl_c_with_two_children_then_resume(ws):
    """Ctrl-C on `adamrot sweep --jobs 2`: a clean message (no traceback), exit 130, both children
    stopped, both runs marked interrupted, the index saved; the next call resumes them."""
    write_sweep(ws / "s.yaml", sweep_dict(grid=FOUR))
    out = ws / "runs" / "demo"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FAKE_INTERRUPT="seed=1", FAKE_SLEEP="30", CUDA_VISIBLE_DEVICES="")

    def sweep_proc(*extra):
        return subprocess.run(  # through `adamrot sweep`, as a user types it
            [sys.executable, "-m", "adamrot.cli", "sweep", "s.yaml", "--jobs", "2", *extra],
            cwd=ws, env=env, capture_output=True, text=True, timeout=120,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    p = sweep_proc()
    assert p.returncode == 130, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and "adamrot sweep: interrupted" in p.stderr
    idx = index(out)
    assert [e["status"] for e in idx.values()] == ["interrupted", "interrupted", "pending",
                                                   "pending"]
    for name in ("seed=0", "seed=1"):
        pid = calls(out / name)[0]["pid"]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped and reaped
        assert idx[name]["returncode"] is not None
    assert not (out / ".sweep.lock").exists()

    env.update(FAKE_SLEEP="0")
    p = sweep_proc()
    assert p.returncode == 0, p.stdout + p.stderr
    idx = index(out)
    assert [e["status"] for e in idx.values()] == ["finished"] * 4
    for name in ("seed=0", "seed=1"):
        c = calls(out / name)
        assert len(c) == 2 and c[1]["kv"]["ckpt_path"] == f"runs/demo/{name}/checkpoints/last.ckpt"
        assert idx[name]["resumed"] is True and idx[name]["attempts"] == 2
    assert "ckpt_path" not in calls(out / "seed=3")[0]["kv"]
