"""Tests for adamrot.sweep (fake trainer script, no Lightning)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from adamrot import sweep as sw

REPO = Path(__file__).resolve().parents[1]

FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    args = sys.argv[1:]
    kv, configs = {}, []
    i = 0
    while i < len(args):
        a, v = args[i], args[i + 1]
        i += 2
        if a == "--config":
            configs.append(v)
        else:
            kv[a[2:]] = v
    t_start = time.time()
    root = kv["trainer.default_root_dir"]
    name = os.environ.get("ADAMROT_SWEEP_RUN", "")
    def listed(var):
        return name in os.environ.get(var, "").split(",")
    ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID",
           "SLURM_JOB_NAME", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NTASKS",
           "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NODELIST")
    os.makedirs(os.path.join(root, "checkpoints"), exist_ok=True)
    with open(os.path.join(root, "calls.jsonl"), "a") as f:
        resumed = open(kv["ckpt_path"]).read() if "ckpt_path" in kv else None
        f.write(json.dumps({"argv": args, "kv": kv, "configs": configs, "pid": os.getpid(),
                            "resumed_from": resumed,
                            "env": {k: os.environ.get(k) for k in ENV}}) + "\\n")
    print("fake trainer running", name, flush=True)
    if listed("FAKE_FAIL") or kv.get("fake.fail") == "true":
        print("Traceback (most recent call last):\\nRuntimeError: boom", file=sys.stderr)
        sys.exit(3)
    ckpt = os.path.join(root, "checkpoints", "last.ckpt")
    if listed("FAKE_WAIT_TERM") and "ckpt_path" not in kv:
        # like adamrot fit under preemption: log a few steps, save last.ckpt on SIGTERM, exit 143
        def on_term(*_):
            with open(ckpt, "w") as f:
                f.write("step=5")
            sys.exit(143)
        signal.signal(signal.SIGTERM, on_term)
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        from tensorboard.compat.proto import event_pb2, summary_pb2
        w = EventFileWriter(root)
        for step in range(6):
            w.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag="train/loss", simple_value=1.0)])))
        w.close()
        open(os.path.join(root, "waiting"), "w").close()
        while True:
            time.sleep(0.1)
    with open(ckpt, "w") as f:
        f.write("ckpt")
    if listed("FAKE_INTERRUPT") and "ckpt_path" not in kv:
        os.kill(os.getppid(), signal.SIGINT)   # like Ctrl-C hitting the sweep
        time.sleep(60)
        sys.exit(5)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    with open(os.path.join(root, "done"), "w") as f:
        f.write("ok")
    with open(os.path.join(root, "spans.jsonl"), "a") as f:
        f.write(json.dumps({"start": t_start, "end": time.time()}) + "\\n")
    """
)


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """Workspace: cwd = tmp_path, a fake trainer and a model config."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fake_trainer.py").write_text(FAKE_TRAINER)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text("trainer: {max_steps: 10}\n")
    for k in ("FAKE_FAIL", "FAKE_INTERRUPT", "FAKE_WAIT_TERM", "FAKE_SLEEP"):
        monkeypatch.delenv(k, raising=False)
    return tmp_path


def sweep_dict(**over):
    d = {
        "name": "demo",
        "out_dir": "runs/demo",
        "configs": ["configs/tiny.yaml"],
        "fixed": {"trainer.max_steps": 200},
        "grid": {
            "model.rotation.scope": ["none", "global"],
            "model.optimizer.init_args.lr": [1.0e-3, 3.0e-3],
            "seed_everything": [0, 1],
        },
        "command": [sys.executable, "fake_trainer.py"],
    }
    d.update(over)
    return d


def write_sweep(path: Path, d: dict) -> Path:
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def calls(run_dir: Path) -> list[dict]:
    p = run_dir / "calls.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def index(out: Path) -> dict[str, dict]:
    return {e["name"]: e for e in json.loads((out / "index.json").read_text())["runs"]}


# --------------------------------------------------------------------------- #
# expansion
# --------------------------------------------------------------------------- #
def test_grid_expansion_names_and_overrides():
    spec = sw.parse_spec(sweep_dict(runs=[
        {"model.optimizer.class_path": "torch.optim.SGD", "model.optimizer.init_args.lr": 0.1,
         "model.rotation.scope": s, "seed_everything": 0}
        for s in ("none", "global")
    ]))
    runs = sw.expand_runs(spec)
    assert len(runs) == 2 * 2 * 2 + 2
    names = [r.name for r in runs]
    assert names[:8] == [
        "scope=none_lr=0.001_seed=0", "scope=none_lr=0.001_seed=1",
        "scope=none_lr=0.003_seed=0", "scope=none_lr=0.003_seed=1",
        "scope=global_lr=0.001_seed=0", "scope=global_lr=0.001_seed=1",
        "scope=global_lr=0.003_seed=0", "scope=global_lr=0.003_seed=1",
    ]
    assert names[8:] == ["scope=none_lr=0.1_seed=0_optimizer=SGD",
                         "scope=global_lr=0.1_seed=0_optimizer=SGD"]
    assert len(set(names)) == len(names)
    assert runs[7].overrides == {"trainer.max_steps": 200, "model.rotation.scope": "global",
                                 "model.optimizer.init_args.lr": 0.003, "seed_everything": 1}
    assert runs[8].overrides["trainer.max_steps"] == 200  # merged over fixed
    # deterministic
    assert [r.name for r in sw.expand_runs(spec)] == names
    # all names filesystem-safe
    assert all(sw.sanitize(n) == n and "/" not in n for n in names)

    cmd = sw.build_command(spec, runs[8], "runs/demo/x", ckpt_path="runs/demo/x/checkpoints/last.ckpt")
    assert cmd[:2] == [sys.executable, "fake_trainer.py"]
    assert cmd[2:4] == ["--config", "configs/tiny.yaml"]
    # class_path before init_args
    assert cmd.index("--model.optimizer.class_path") < cmd.index("--model.optimizer.init_args.lr")
    assert cmd[-4:] == ["--trainer.default_root_dir", "runs/demo/x",
                        "--ckpt_path", "runs/demo/x/checkpoints/last.ckpt"]


def test_grid_order_changes_the_run_order_not_the_names():
    """``grid_order: [seed_everything, scope]`` runs every scope's seed 0 first (so a sweep
    stopped early holds equal seed counts per scope); names and overrides stay the same."""
    grid = {"model.rotation.scope": ["none", "global", "svd"], "seed_everything": [0, 1]}
    plain = sw.expand_runs(sw.parse_spec({"grid": grid}))
    seeds_first = sw.expand_runs(sw.parse_spec(
        {"grid": grid, "grid_order": ["seed_everything", "model.rotation.scope"]}))
    assert [r.name for r in seeds_first] == [
        "scope=none_seed=0", "scope=global_seed=0", "scope=svd_seed=0",
        "scope=none_seed=1", "scope=global_seed=1", "scope=svd_seed=1"]
    assert sorted((r.name, tuple(r.overrides.items())) for r in seeds_first) == \
        sorted((r.name, tuple(r.overrides.items())) for r in plain)
    with pytest.raises(sw.SweepConfigError, match="grid_order: expected a list holding each"):
        sw.parse_spec({"grid": grid, "grid_order": ["seed_everything"]})


def test_single_run_and_explicit_names():
    spec = sw.parse_spec({"fixed": {"a.b": 1}})
    runs = sw.expand_runs(spec)
    assert [(r.name, r.overrides) for r in runs] == [("run", {"a.b": 1})]
    spec = sw.parse_spec({"runs": [{"name": "base", "x.y": 1}, {"x.y": 2}]})
    assert [r.name for r in sw.expand_runs(spec)] == ["base", "y=2"]


def test_cli_value_roundtrips_through_yaml():
    for v in [1.0e-3, 3e-5, 200, True, False, None, "global", "1.0", "true", "a b: c",
              "torch.optim.SGD", [0.9, 0.95], {"a": [1, 2], "b": "x"}]:
        assert yaml.safe_load(sw.cli_value(v)) == v, v
    assert sw.cli_value(1.0e-3) == "0.001"
    # YAML-1.1 strings like 1e-3 become floats in the spec
    spec = sw.parse_spec({"grid": {"lr": ["1e-3", 2e-3]}})
    assert spec.grid["lr"] == [0.001, 0.002]


@pytest.mark.parametrize("doc, needle", [
    ({"bogus": 1}, "unknown top-level key(s) 'bogus'"),
    ({"grid": {"model.rotation.scope": []}}, "grid.model.rotation.scope: empty list"),
    ({"grid": {"model.rotation.scope": "none"}}, "grid.model.rotation.scope: expected a list"),
    ({"grid": {"a": [1, 1]}}, "grid.a: duplicate value"),
    ({"grid": ["a"]}, "grid: expected a mapping"),
    ({"fixed": {"trainer.default_root_dir": "x"}}, "fixed.trainer.default_root_dir"),
    ({"fixed": {"--trainer.max_steps": 3}}, "without leading dashes"),
    ({"runs": {"a": 1}}, "runs: expected a list"),
    ({"runs": [3]}, "runs[0]: expected a mapping"),
    ({"configs": "a.yaml", "command": []}, "command: expected a non-empty list"),
    ([1, 2], "top level must be a mapping"),
])
def test_validation_errors(doc, needle):
    with pytest.raises(sw.SweepConfigError) as ei:
        sw.parse_spec(doc)
    assert needle in str(ei.value)


def test_duplicate_run_names_error():
    spec = sw.parse_spec({"grid": {"model.rotation.scope": ["none", "global"]},
                          "runs": [{"model.rotation.scope": "global"}]})
    with pytest.raises(sw.SweepConfigError, match="(?s)duplicate run names.*scope=global"):
        sw.expand_runs(spec)
    spec = sw.parse_spec({"runs": [{"name": "a", "x": 1}, {"name": "a", "x": 2}]})
    with pytest.raises(sw.SweepConfigError, match="duplicate run names"):
        sw.expand_runs(spec)


def test_main_reports_invalid_file(ws, capsys):
    write_sweep(ws / "bad.yaml", sweep_dict(grid={"model.rotation.scope": []}))
    assert sw.main(["bad.yaml"]) == 2
    assert "grid.model.rotation.scope: empty list" in capsys.readouterr().err
    write_sweep(ws / "bad2.yaml", sweep_dict(configs=["configs/missing.yaml"]))
    assert sw.main(["bad2.yaml"]) == 2
    assert "configs[0]: file not found" in capsys.readouterr().err
    assert not (ws / "runs").exists()


# --------------------------------------------------------------------------- #
# execution
# --------------------------------------------------------------------------- #
def test_dry_run_writes_nothing(ws, capsys):
    write_sweep(ws / "s.yaml", sweep_dict())
    assert sw.main(["s.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[8/8] scope=global_lr=0.003_seed=1" in out
    assert "--trainer.default_root_dir runs/demo/scope=none_lr=0.001_seed=0" in out
    assert not (ws / "runs").exists()


def test_run_fail_skip_rerun(ws, monkeypatch, capsys):
    d = sweep_dict(grid={"model.rotation.scope": ["none", "global"], "seed_everything": [0, 1]},
                   runs=[{"name": "sgd_fail", "model.optimizer.class_path": "torch.optim.SGD",
                          "fake.fail": True}])
    write_sweep(ws / "s.yaml", d)
    out = ws / "runs" / "demo"
    monkeypatch.setenv("FAKE_FAIL", "scope=global_seed=0")
    rc = sw.main(["s.yaml"])
    assert rc == 1
    idx = index(out)
    assert list(idx) == ["scope=none_seed=0", "scope=none_seed=1", "scope=global_seed=0",
                         "scope=global_seed=1", "sgd_fail"]
    st = {k: e["status"] for k, e in idx.items()}
    assert st == {"scope=none_seed=0": "finished", "scope=none_seed=1": "finished",
                  "scope=global_seed=0": "failed", "scope=global_seed=1": "finished",
                  "sgd_fail": "failed"}
    bad = idx["scope=global_seed=0"]
    assert bad["returncode"] == 3 and "RuntimeError: boom" in bad["log_tail"]
    assert idx["scope=none_seed=0"]["returncode"] == 0
    assert idx["scope=none_seed=0"]["wall_time_s"] >= 0
    assert idx["scope=none_seed=0"]["dir"] == os.path.join("runs/demo", "scope=none_seed=0")
    assert idx["sgd_fail"]["overrides"]["fake.fail"] is True
    # every run executed once, with configs/overrides/root dir
    for name in idx:
        c = calls(out / name)
        assert len(c) == 1
        assert c[0]["configs"] == ["configs/tiny.yaml"]
        assert c[0]["kv"]["trainer.default_root_dir"] == f"runs/demo/{name}"
        assert c[0]["kv"]["trainer.max_steps"] == "200"
        assert "ckpt_path" not in c[0]["kv"]
        assert (out / name / "run.log").read_text().count("fake trainer running") == 1
    assert calls(out / "scope=global_seed=1")[0]["kv"]["model.rotation.scope"] == "global"
    csv_text = (out / "index.csv").read_text()
    assert csv_text.splitlines()[0].startswith("name,status,returncode")
    assert "scope=global_seed=0,failed,3" in csv_text
    printed = capsys.readouterr().out
    assert "[3/5]" in printed and "failed" in printed

    # second pass: finished runs skipped, failed ones rerun from scratch
    monkeypatch.setenv("FAKE_FAIL", "")
    rc = sw.main(["s.yaml"])
    assert rc == 1  # sgd_fail fails through its override
    idx = index(out)
    assert idx["scope=global_seed=0"]["status"] == "finished"
    assert idx["scope=global_seed=0"]["attempts"] == 2
    assert len(calls(out / "scope=none_seed=0")) == 1          # skipped
    assert len(calls(out / "scope=global_seed=0")) == 1         # fresh dir
    assert (out / ".attempts" / "scope=global_seed=0.1" / "calls.jsonl").exists()
    assert "ckpt_path" not in calls(out / "scope=global_seed=0")[0]["kv"]
    assert idx["sgd_fail"]["status"] == "failed"

    # a finished run whose directory was deleted is run again (fresh), the others skipped
    shutil.rmtree(out / "scope=none_seed=1")
    sw.main(["s.yaml"])
    assert len(calls(out / "scope=none_seed=1")) == 1
    assert index(out)["scope=none_seed=1"]["status"] == "finished"
    assert len(calls(out / "scope=none_seed=0")) == 1


def test_only_failed(ws, monkeypatch):
    write_sweep(ws / "s.yaml", sweep_dict(grid={"seed_everything": [0, 1, 2]}))
    out = ws / "runs" / "demo"
    monkeypatch.setenv("FAKE_FAIL", "seed=1")
    assert sw.main(["s.yaml"]) == 1
    # pretend seed=2 was interrupted: --only-failed must leave it alone
    data = json.loads((out / "index.json").read_text())
    data["runs"][2]["status"] = "interrupted"
    (out / "index.json").write_text(json.dumps(data))
    monkeypatch.setenv("FAKE_FAIL", "")
    assert sw.main(["s.yaml", "--only-failed"]) == 0
    idx = index(out)
    assert [e["status"] for e in idx.values()] == ["finished", "finished", "interrupted"]
    assert len(calls(out / "seed=2")) == 1
    # a plain re-run resumes the interrupted one from its checkpoint
    assert sw.main(["s.yaml"]) == 0
    c = calls(out / "seed=2")
    assert len(c) == 2 and c[1]["kv"]["ckpt_path"] == "runs/demo/seed=2/checkpoints/last.ckpt"
    assert len(calls(out / "seed=0")) == 1


def test_keyboard_interrupt_then_resume(ws):
    """Ctrl-C during a run: run marked interrupted, index saved, exit 130;
    the next invocation skips finished runs and resumes with --ckpt_path."""
    write_sweep(ws / "s.yaml", sweep_dict(grid={"seed_everything": [0, 1, 2]}))
    out = ws / "runs" / "demo"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FAKE_INTERRUPT="seed=1")
    env.pop("FAKE_FAIL", None)

    def sweep_proc():
        return subprocess.run(
            [sys.executable, "-m", "adamrot.sweep", "s.yaml"], cwd=ws, env=env,
            capture_output=True, text=True, timeout=60,
            # SIGINT may be ignored in background shells; Python then would not
            # install its KeyboardInterrupt handler
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    p = sweep_proc()
    assert p.returncode == 130, p.stdout + p.stderr
    idx = index(out)
    assert [e["status"] for e in idx.values()] == ["finished", "interrupted", "pending"]
    assert (out / "seed=1" / "checkpoints" / "last.ckpt").exists()
    assert not (out / "seed=2").exists()
    assert not (out / ".sweep.lock").exists()

    p = sweep_proc()
    assert p.returncode == 0, p.stdout + p.stderr
    idx = index(out)
    assert [e["status"] for e in idx.values()] == ["finished"] * 3
    assert len(calls(out / "seed=0")) == 1
    c = calls(out / "seed=1")
    assert len(c) == 2
    assert "ckpt_path" not in c[0]["kv"]
    assert c[1]["kv"]["ckpt_path"] == "runs/demo/seed=1/checkpoints/last.ckpt"
    assert idx["seed=1"]["resumed"] is True and idx["seed=1"]["attempts"] == 2
    assert "ckpt_path" not in calls(out / "seed=2")[0]["kv"]
    assert "resume" in p.stdout


def test_sigterm_to_the_sweep_stops_runs_with_a_checkpoint_and_no_orphan(ws):
    """``kill SWEEP_PID`` (or a batch system's SIGTERM): the running run gets SIGTERM, saves its
    checkpoint and exits 143; the index says interrupted, the sweep exits 143 and no child
    keeps writing into the run directory; the same command resumes it."""
    write_sweep(ws / "s.yaml", sweep_dict(grid={"seed_everything": [0, 1, 2]}))
    out = ws / "runs" / "demo"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FAKE_WAIT_TERM="seed=1")
    proc = subprocess.Popen([sys.executable, "-m", "adamrot.sweep", "s.yaml"], cwd=ws, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / "seed=1" / "waiting").exists() and time.time() < deadline:
            time.sleep(0.05)
        child = calls(out / "seed=1")[0]["pid"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:                                     # never leave a sweep behind on failure
        if proc.poll() is None:
            proc.kill()
            for c in calls(out / "seed=1"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c["pid"], signal.SIGKILL)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err
    assert [e["status"] for e in index(out).values()] == ["finished", "interrupted", "pending"]
    assert (out / "seed=1" / "checkpoints" / "last.ckpt").read_text() == "step=5"
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)                        # the run stopped with the sweep
    env.pop("FAKE_WAIT_TERM")
    p = subprocess.run([sys.executable, "-m", "adamrot.sweep", "s.yaml"], cwd=ws, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert calls(out / "seed=1")[1]["resumed_from"] == "step=5"


def test_killed_sweep_running_entry_is_resumed(ws):
    """A sweep killed hard leaves 'running' in the index: treated as interrupted."""
    write_sweep(ws / "s.yaml", sweep_dict(grid={"seed_everything": [0, 1]}))
    out = ws / "runs" / "demo"
    assert sw.main(["s.yaml"]) == 0
    data = json.loads((out / "index.json").read_text())
    data["runs"][0]["status"] = "running"
    (out / "index.json").write_text(json.dumps(data))
    assert sw.main(["s.yaml"]) == 0
    c = calls(out / "seed=0")
    assert len(c) == 2 and c[1]["kv"]["ckpt_path"].endswith("seed=0/checkpoints/last.ckpt")
    assert len(calls(out / "seed=1")) == 1
